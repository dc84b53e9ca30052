#!/usr/bin/env bash
# The device check (issue 40, part 9): the qwen-tiny profile's GPU path, bf16 on CUDA, in one call of
# at most 10 minutes on a lent GPU machine (H100/H200, Python 3.12, torch 2.11+cu130, transformers 5.17,
# peft, accelerate; no network, no vllm, no dvc). scripts/gpu_check.py says what runs and what is carried.
#
#   bash scripts/gpu-check.sh --prepare     # here, with network and .venv: fills gpu-check/ (ignored by git)
#   bash scripts/gpu-check.sh               # there (make gpu-check): prints one JSON, writes $OUT/gpu-check.json
#   PYTHON=.venv/bin/python bash scripts/gpu-check.sh --device cpu   # a dry run of the same steps on a CPU
#
# From a session with the device tool: run(carry=["gpu-check"], command="bash scripts/gpu-check.sh",
# timeout_s=600). What is carried (gpu-check/, with the working tree under 64 MiB): params.yaml, data/
# (data/sft, the dedup split, the search index), Qwen3's tokenizer (xz), wheels/ (trl, datasets,
# dvclive with dvc, at our pins, for cp312) and manifest.json. Versions there that differ from our pins
# (as a session saw them): Python 3.12 (ours 3.11), torch 2.11.0+cu130 (ours 2.13.0), transformers
# 5.17.0 (ours 5.19.0), huggingface_hub 1.33.0 (ours 2.4.0), numpy 2.5.2 (2.3.5), tokenizers 0.23.2
# (0.23.3), sentencepiece 0.2.2 (0.2.3); pyarrow, pandas, peft and fsspec unknown until it runs: the
# JSON's `versions` marks each that `differs`. The project says Python <3.12, so the library runs
# from this source tree on PYTHONPATH, never `pip install -e .`.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  shift
  PY="${PYTHON:-.venv/bin/python}"
  [ -x "$PY" ] || { echo "gpu-check --prepare: $PY not found: run make setup (and make setup-dev) first" >&2; exit 1; }
  exec "$PY" scripts/gpu_check.py prepare "$@"
fi
PY="${PYTHON:-python3}"
if [ ! -f gpu-check/manifest.json ]; then
  echo "gpu-check: gpu-check/ is missing: run 'bash scripts/gpu-check.sh --prepare' where there is network, then carry gpu-check" >&2
  exit 2
fi
exec "$PY" scripts/gpu_check.py run "$@"
