# t2vserve: `make demo` and `make test` are all a newcomer needs (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROMPT ?= a red circle moving to the right on a black background
MODEL  ?= unet3d

.PHONY: help install model demo test quality sweep bench soak serve configs check-configs clean typecheck train-demo distill-demo

help:
	@echo "make demo    export the trained demo model, serve it on tritonserver, write outputs/demo.mp4 (+ .png strip)"
	@echo "             (MODEL=wan22: the tiny Wan2.2 model -> outputs/demo-wan22.mp4)"
	@echo "make test    run the test suite (starts real tritonserver instances)"
	@echo "make train-demo  train the demo model on the shapes world (GPU: DEVICE=cuda, about 8 minutes on an H100)"
	@echo "make distill-demo  distil the demo model into its 4-step guidance-free student (GPU: DEVICE=cuda, 5 minutes + evaluation)"
	@echo "make serve   serve model_repository/ on localhost:8000 (HTTP) / 8001 (gRPC)"
	@echo "make quality every track vs full precision through the server -> docs/quality.md (gated; MODEL=wan22: docs/quality-wan22.md)"
	@echo "make bench   CPU benchmark: in-process vs served, concurrency 1/2/4 (GPU: client/gpu_bench.sh)"
	@echo "make soak    bounded load on a loopback server: DURATION=600 CONCURRENCY=8 -> outputs/soak.json (+ .md)"
	@echo "make model   build + export the tiny model into model_repository/"
	@echo "make configs regenerate model_repository/*/config.pbtxt from t2vserve/spec.py"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(STAMP)

model: $(STAMP)
	$(BIN)/python export/export_onnx.py --tiny

demo: $(STAMP)
	$(BIN)/python -m t2vserve.demo --model "$(MODEL)" --prompt "$(PROMPT)"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

DEVICE ?= cuda
# Writes artifacts/trained-<family>/ (+ samples and adherence JSON beside it); copy it to t2vserve/data/trained/<family>/ to ship it.
train-demo: $(STAMP)
	$(BIN)/python -m t2vserve.train --family $(MODEL) --device $(DEVICE) --out artifacts/trained-$(MODEL) --evaluate --max-seconds 540

# Writes artifacts/distilled-unet3d/ (a copy of the demo model with unet_distilled/) and artifacts/distill-report.json;
# copy unet_distilled/ to t2vserve/data/trained/unet3d/ and run `make configs` to ship it.
distill-demo: $(STAMP)
	$(BIN)/python -m t2vserve.train distill --device $(DEVICE) --out artifacts/distilled-unet3d --evaluate --max-seconds 300

# Two gated reports on MODEL's demo model (trained, shipped): the standard tier's tracks (docs/quality.md; other
# families docs/quality-<family>.md) and the draft tier's (docs/quality[-<family>]-draft.md).
quality: $(STAMP)
	$(BIN)/python -m t2vserve.quality --model $(MODEL)
	$(BIN)/python -m t2vserve.quality --model $(MODEL) --no-export --quality-set t2vserve/data/quality_set_draft.json

sweep: $(STAMP)
	$(BIN)/python -m t2vserve.quantize sweep

serve: model
	$(BIN)/python -m t2vserve.server --runner onnxruntime

configs: $(STAMP)
	$(BIN)/python -m t2vserve.repository --write

check-configs: $(STAMP)
	$(BIN)/python -m t2vserve.repository --check

clean:
	rm -rf artifacts outputs model_repository/*/1/*.onnx model_repository/*/1/*.json model_repository/*/1/tokenizer

# mypy on the TensorRT builder against tensorrt-stubs (installed apart from the venv: see build/typestubs.py)
TYPESTUBS := $(VENV)/typestubs
$(TYPESTUBS)/.stamp: $(STAMP) build/typestubs.py
	$(BIN)/python build/typestubs.py $(TYPESTUBS)
	touch $@

typecheck: $(TYPESTUBS)/.stamp
	MYPYPATH=$(TYPESTUBS) $(BIN)/python -m mypy --config-file build/mypy.ini

bench: model
	$(BIN)/python client/bench.py cpu --out outputs/bench-cpu.json

# Soak: DURATION seconds of CONCURRENCY clients on a loopback tritonserver of model_repository/ (exported
# once if it is not); SOAK_ARGS passes further flags (--steps 4, --protocol grpc, --max-failures 3).
DURATION    ?= 600
CONCURRENCY ?= 8
SOAK_ARGS   ?=
EXPORTED    := model_repository/unet/1/model.onnx
$(EXPORTED): | $(STAMP)
	$(BIN)/python export/export_onnx.py --tiny

soak: $(STAMP) $(EXPORTED)
	$(BIN)/python -m t2vserve.bench.soak --duration $(DURATION) --concurrency $(CONCURRENCY) --out outputs/soak.json $(SOAK_ARGS)
