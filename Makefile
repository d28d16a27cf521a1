# DMVER benchmark toolkit. Every target creates .venv on first use: nothing needs installing first.
#
# Variables (make VAR=value ...):
#   MANIFEST  manifest CSV (default: the sample dataset's)      WORK     work folder (default work/sample)
#   JOBS      videos in parallel, 0 = all cores                 DEVICE   cpu | cuda | auto (features)
#   FRAMES    frames per video (79 as published)                SIZE     frame side (224)
#   RESIZE    crop (I3D protocol) | squash (published)          FLOW_BACKEND  opencv | torch | auto
#   WEIGHTS   checkpoint folder, or `random`                    SEEDS    seeds per table cell (5)
#   DATASET   dmver | iemocap | music-video | other (which published numbers the table shows)
#   CV        evaluation protocol of `make table` / `make bench-classify`: empty = the manifest's fixed split,
#             K = group-aware K-fold cross-validation, groups = leave-one-group-out (see classify/protocol.py)
#   MODALITIES  feature sets for `make features` (default: every registered one)
#   FEATURE_ARGS  extra options of the feature stage, e.g. "--text-model DIR" or "--pca"
#
# Stage commands exit 1 when some videos failed (the rest are done, see WORK/<stage>/failures.csv);
# the targets below carry on past that so one broken video does not stop a 31,761-video run,
# and stop on anything worse (exit 2: nothing ran).

PYTHON_BOOT  ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
STAMP        := $(VENV)/.installed

SAMPLE       ?= data/sample
MANIFEST     ?= $(SAMPLE)/manifest.csv
WORK         ?= work/sample
JOBS         ?= 0
DEVICE       ?= auto
WEIGHTS      ?= weights
SEEDS        ?= 5
FRAMES       ?= 79
SIZE         ?= 224
RESIZE       ?= crop
FLOW_BACKEND ?= opencv
DATASET      ?= other
CV           ?=
CV_ARGS      := $(if $(strip $(CV)),--cv $(strip $(CV)))

# The demo runs the whole pipeline on the sample at a smaller geometry so it ends in minutes.
DEMO_WORK    ?= work/demo
DEMO_ARGS    := MANIFEST=$(MANIFEST) WORK=$(DEMO_WORK) FRAMES=16 SIZE=112

STAGE_ARGS   := --manifest $(MANIFEST) --work $(WORK) --jobs $(JOBS)
GEOMETRY     := --num-frames $(FRAMES) --size $(SIZE) --resize $(RESIZE)
# Exit code 1 (some videos failed) is reported by the stage and does not stop make.
PARTIAL_OK   := || [ $$? -eq 1 ]

.PHONY: venv test demo sample frames flow audio features weights table bench bench-features bench-cache bench-classify clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sample: $(STAMP)
	$(PY) -m extract.sample --out $(SAMPLE)

$(MANIFEST):
	$(MAKE) sample

frames: $(STAMP) $(MANIFEST)
	$(PY) -m extract.frames $(STAGE_ARGS) $(GEOMETRY) $(PARTIAL_OK)

flow: $(STAMP) $(MANIFEST)
	$(PY) -m extract.flow $(STAGE_ARGS) $(GEOMETRY) --flow-backend $(FLOW_BACKEND) $(PARTIAL_OK)

audio: $(STAMP) $(MANIFEST)
	$(PY) -m extract.audio $(STAGE_ARGS) $(PARTIAL_OK)

# features: every modality of the registry (python -m features.extract --names; or MODALITIES="rgb flow");
# WEIGHTS=random runs seeded random backbones (numbers not comparable; the text encoder is always the real one).
features: $(STAMP)
	for m in $(or $(MODALITIES),$$($(PY) -m features.extract --names)); do \
	  $(PY) -m features.extract --modality $$m --manifest $(MANIFEST) --work $(WORK) --weights $(WEIGHTS) --device $(DEVICE) $(FEATURE_ARGS) $(PARTIAL_OK) || exit $$?; \
	done

weights: $(STAMP)
	$(PY) -m features.weights --out $(WEIGHTS)

table: $(STAMP)
	$(PY) -m classify.table --manifest $(MANIFEST) --work $(WORK) --seeds $(SEEDS) --dataset $(DATASET) --jobs $(JOBS) $(CV_ARGS)

# The demo: sample dataset -> stages -> features (random weights unless WEIGHTS holds checkpoints) -> table.
demo: $(STAMP)
	$(PY) -m extract.sample --out $(SAMPLE)
	$(MAKE) --no-print-directory frames flow audio $(DEMO_ARGS)
	$(MAKE) --no-print-directory features $(DEMO_ARGS) WEIGHTS=$$( [ -f $(WEIGHTS)/rgb_imagenet.pt ] && echo $(WEIGHTS) || echo random )
	$(MAKE) --no-print-directory table $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m extract.bench

bench-features: $(STAMP)
	$(PY) -m features.bench

bench-cache: $(STAMP)
	$(PY) -m features.bench_cache

bench-classify: $(STAMP)
	$(PY) -m classify.bench --jobs $(JOBS) $(CV_ARGS)

clean-demo:
	rm -rf $(DEMO_WORK)
