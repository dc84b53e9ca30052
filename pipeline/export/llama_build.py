"""llama.cpp's CPU backend as scripts/setup.sh builds it: which variant a process loads, and how to force one.

On x86-64 setup builds ggml's CPU code once per instruction-set level (never the AMX one); each process loads the
best its CPU runs the first time it loads a model.

    python -m pipeline.export.llama_build                      # which variant loads here, and why
    python -m pipeline.export.llama_build --cpu haswell        # force one (AVX2, the portable build's)
    python -m pipeline.export.llama_build --cpu haswell --generate model.gguf --tokens 16

In Python: force_cpu_variant(name) before the first model, or use_env_variant() for DISTILLERY_LLAMA_CPU=<variant>.
Design: docs/design/llama-cpp.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import re
import sys
from pathlib import Path

ENV = "DISTILLERY_LLAMA_CPU"

# ggml/src/CMakeLists.txt's x86 variants (GGML_CPU_ALL_VARIANTS) and the features each needs;
# their score is ggml's (ggml-cpu/arch/x86/cpu-feats.cpp): 0 where the CPU lacks one.
FEATURE_BITS = {"FMA": 1, "F16C": 1 << 1, "SSE42": 1 << 2, "BMI2": 1 << 3, "AVX": 1 << 4, "AVX2": 1 << 5,
                "AVX_VNNI": 1 << 6, "AVX512": 1 << 7, "AVX512_VBMI": 1 << 8, "AVX512_BF16": 1 << 9,
                "AVX512_VNNI": 1 << 10, "AMX_INT8": 1 << 11}
CPUINFO_FLAGS = {"FMA": ["fma"], "F16C": ["f16c"], "SSE42": ["sse4_2"], "BMI2": ["bmi2"], "AVX": ["avx"],
                 "AVX2": ["avx2"], "AVX_VNNI": ["avx_vnni"],
                 "AVX512": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"],
                 "AVX512_VBMI": ["avx512vbmi"], "AVX512_BF16": ["avx512_bf16"], "AVX512_VNNI": ["avx512_vnni"],
                 "AMX_INT8": ["amx_int8"]}
_HASWELL = ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"]
VARIANTS = {
    "x64": [], "sse42": ["SSE42"], "sandybridge": ["SSE42", "AVX"], "ivybridge": ["SSE42", "AVX", "F16C"],
    "piledriver": ["SSE42", "AVX", "F16C", "FMA"], "haswell": _HASWELL,
    "skylakex": _HASWELL + ["AVX512"], "cannonlake": _HASWELL + ["AVX512", "AVX512_VBMI"],
    "cascadelake": _HASWELL + ["AVX512", "AVX512_VNNI"],
    "icelake": _HASWELL + ["AVX512", "AVX512_VBMI", "AVX512_VNNI"],
    "cooperlake": _HASWELL + ["AVX512", "AVX512_VNNI", "AVX512_BF16"],
    "zen4": _HASWELL + ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"],
    "alderlake": _HASWELL + ["AVX_VNNI"],
    "sapphirerapids": _HASWELL + ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"],
}
_MAPPED = re.compile(r"/libggml-cpu-([A-Za-z0-9_.]+)\.so$")


def variants_dir() -> Path:
    """Where setup.sh installs the variants (GGML_BACKEND_DIR): <venv>/lib/ggml-cpu-variants."""
    return Path(sys.prefix).resolve() / "lib" / "ggml-cpu-variants"


def built_variants() -> list[str]:
    d = variants_dir()
    return sorted(p.name[len("libggml-cpu-"):-len(".so")] for p in d.glob("libggml-cpu-*.so")) if d.is_dir() else []


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def score(variant: str, flags: set[str]) -> int:
    """ggml's score of a variant on a CPU with these /proc/cpuinfo flags (0: it cannot run)."""
    total = 1
    for feature in VARIANTS[variant]:
        if not all(f in flags for f in CPUINFO_FLAGS[feature]):
            return 0
        total += FEATURE_BITS[feature]
    return total


def best_variant(flags: set[str], available: list[str]) -> str | None:
    """The variant ggml's loader picks among `available` on a CPU with these flags."""
    scored = [(score(v, flags), v) for v in available if v in VARIANTS]
    best = max(scored, default=(0, None))
    return best[1] if best[0] > 0 else None


def _mapped(pattern: re.Pattern) -> list[re.Match]:
    return [m for line in Path("/proc/self/maps").read_text().splitlines() if (m := pattern.search(line))]


def _ggml() -> ctypes.CDLL:
    """libggml as libllama loaded it: the wheel holds libggml.so and libggml.so.0 as two files,
    and a dlopen of the other one would be a second ggml with a registry of its own."""
    import llama_cpp  # noqa: F401  (loads libllama, hence libggml)

    loaded = _mapped(re.compile(r"(/\S*/libggml\.so[.0-9]*)$"))
    if not loaded:
        raise RuntimeError("llama_cpp is loaded but no libggml.so is mapped: an unexpected build")
    ggml = ctypes.CDLL(loaded[0].group(1))
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    return ggml


def loaded_variant() -> str | None:
    """The CPU variant this process has loaded (None: none yet, or a build without variants)."""
    found = _mapped(_MAPPED)
    return found[0].group(1) if found else None


def force_cpu_variant(name: str) -> None:
    """Load libggml-cpu-<name>.so as this process's CPU backend; llama.cpp then loads no other
    (llama_backend_init loads the best one only while no backend is loaded). Before the first
    model: once a variant is loaded, asking for another one is an error."""
    path = variants_dir() / f"libggml-cpu-{name}.so"
    if not path.exists():
        have = ", ".join(built_variants()) or "none: this llama.cpp is a build without variants"
        raise FileNotFoundError(f"{path} not found (built: {have}); scripts/setup.sh builds them")
    ggml = _ggml()
    if ggml.ggml_backend_reg_count():
        current = loaded_variant()
        if current == name:
            return
        raise RuntimeError(f"llama.cpp has already loaded its CPU backend ({current or 'built in'}); "
                           f"force {name} before the first model")
    if not ggml.ggml_backend_load(str(path).encode()):
        raise RuntimeError(f"{path} does not load: this CPU lacks its instructions ({', '.join(VARIANTS.get(name, []))})")


def use_env_variant() -> str | None:
    """force_cpu_variant($DISTILLERY_LLAMA_CPU) when it is set; returns it."""
    name = os.environ.get(ENV, "").strip()
    if name:
        force_cpu_variant(name)
    return name or None


def system_info() -> str:
    """llama.cpp's own line: the CPU backend's compiled features (AVX512 = 1 ...)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def load_backends() -> None:
    """What the first Llama() does: the best variant, unless one was forced."""
    import llama_cpp

    llama_cpp.llama_backend_init()


REPACK_LOG = re.compile(r"CPU_REPACK model buffer size = *([0-9.]+) MiB")


def repacked_mib(log: str) -> float:
    """MiB of weights llama.cpp repacked for its CPU matrix kernels (0: none), from its load log:
    q8_0 weights are repacked only by Distillery's AVX-512 VNNI kernel (scripts/llama-cpp/)."""
    return sum(float(m.group(1)) for m in REPACK_LOG.finditer(log))


def _load_logged(model: str, **kwargs):
    """llama_cpp.Llama(model, verbose=True) with llama.cpp's log (written to fd 2) captured."""
    import tempfile

    import llama_cpp

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        llm = None
        try:
            llm = llama_cpp.Llama(model_path=model, verbose=True, **kwargs)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log = tmp.read().decode("utf-8", errors="replace")
            if llm is None:  # a model that does not load: llama.cpp's reasons on stderr as usual
                sys.stderr.write(log[-20000:])
        return llm, log


def greedy(model: str, prompt: str, tokens: int) -> tuple[list[int], list[float], float]:
    """Greedy token ids from llama.cpp's logits, the logits of the first step, and the MiB of
    weights repacked for the CPU's matrix kernels."""
    import llama_cpp
    import numpy as np

    llm, log = _load_logged(model, n_ctx=256, n_batch=256, n_threads=1, seed=0)
    llm.verbose = False
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama-cpp-python's log level, as verbose=False
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.eval(ids)
    out, first = [], None
    for _ in range(tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        first = logits.tolist() if first is None else first
        out.append(int(np.argmax(logits)))
        llm.eval([out[-1]])
    return out, first, repacked_mib(log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", help=f"the variant to force (default: ${ENV}, else ggml's choice)")
    parser.add_argument("--generate", metavar="GGUF", help="also print greedy token ids from this model")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--logits", action="store_true", help="with --generate: the first step's logits too")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    if args.cpu:
        force_cpu_variant(args.cpu)
    else:
        use_env_variant()
    load_backends()
    flags = cpu_flags()
    built = built_variants()
    out = {"variants_dir": str(variants_dir()), "built": built, "expected": best_variant(flags, built),
           "loaded": loaded_variant(), "system_info": system_info()}
    if args.generate:
        out["tokens"], logits, out["repacked_mib"] = greedy(args.generate, args.prompt, args.tokens)
        if args.logits:
            out["logits"] = logits
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k}: {' '.join(v) if k == 'built' else v}")


if __name__ == "__main__":
    main()
