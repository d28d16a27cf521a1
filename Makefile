# DMVER benchmark toolkit. Every target creates .venv on first use; nothing needs to be installed first.
# Variables: MANIFEST (CSV manifest), WORK (work folder), JOBS (parallel videos), DEVICE (cpu|cuda|auto),
# WEIGHTS (checkpoint folder), SEEDS (seeds per table cell), FRAMES / SIZE (clip geometry).

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed

SAMPLE      ?= data/sample
MANIFEST    ?= $(SAMPLE)/manifest.csv
WORK        ?= work/sample
JOBS        ?= 0
DEVICE      ?= auto
WEIGHTS     ?= weights
SEEDS       ?= 5
FRAMES      ?= 79
SIZE        ?= 224
FLOW_BACKEND ?= opencv

.PHONY: venv test demo sample frames flow audio features weights table bench clean

$(STAMP): setup.cfg
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sample: $(STAMP)
	$(PY) -m extract.sample --out $(SAMPLE)
