"""scripts/setup.sh's llama.cpp: one CPU backend per x86 level, the best one the CPU runs loaded
by default, the AVX2 one (haswell: the portable build's instructions) when forced, never the AMX
one (sapphirerapids), whose kernels crashed. The forced and the default variant generate the same
greedy tokens on the tiny exported model; where the default has Distillery's q8_0 kernel (AVX-512
VNNI), its logits equal llama.cpp's own q8_0 path's but for the order of float sums. No timing
here: bench/llama_cpp.py measures speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import stage_env

from pipeline.export import llama_build

AMX_XEON = ("fpu sse4_2 avx f16c fma bmi2 avx2 avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi "
            "avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8 amx_bf16")
BUILT = ["haswell", "skylakex", "cascadelake", "icelake", "zen4", "alderlake"]


def need_variant_build() -> list[str]:
    built = llama_build.built_variants()
    if not built:
        msg = (f"no CPU variants in {llama_build.variants_dir()}: llama.cpp is not scripts/setup.sh's variant build "
               "(make setup)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return built


def probe(*args: str, env_cpu: str | None = None) -> dict:
    env = stage_env()
    env.pop(llama_build.ENV, None)
    if env_cpu:
        env[llama_build.ENV] = env_cpu
    proc = subprocess.run([sys.executable, "-m", "pipeline.export.llama_build", "--json", *args], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ggml_loader_choice_by_cpu_flags_never_amx():
    """The variant ggml scores best per CPU, among what setup.sh builds: the AMX Xeon gets zen4
    (AVX-512 VBMI/VNNI/BF16, no AMX), an AVX2-only CPU the AVX2 baseline."""
    assert llama_build.best_variant(llama_build.cpu_flags(f"flags\t\t: {AMX_XEON}\n"), BUILT) == "zen4"
    assert llama_build.best_variant(set(AMX_XEON.split()), BUILT + ["sapphirerapids"]) == "sapphirerapids"
    assert llama_build.best_variant({"sse4_2", "avx", "f16c", "fma", "bmi2", "avx2"}, BUILT) == "haswell"
    assert llama_build.best_variant({"sse4_2", "avx", "f16c", "fma", "bmi2", "avx2", "avx_vnni"}, BUILT) == "alderlake"
    skylake = {"sse4_2", "avx", "f16c", "fma", "bmi2", "avx2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
    assert llama_build.best_variant(skylake, BUILT) == "skylakex"
    assert llama_build.best_variant(skylake | {"avx512_vnni"}, BUILT) == "cascadelake"
    assert llama_build.best_variant({"sse4_2", "avx"}, BUILT) is None


def test_the_default_variant_is_the_best_and_avx2_forced_generates_the_same(exported):
    built = need_variant_build()
    assert "sapphirerapids" not in built
    assert "haswell" in built
    model = str(exported / "models/gguf/quant/distillery-q8_0.gguf")
    # 46 prompt tokens (tiny tokenizer): 11 groups of 4 through the batched kernels, 2 rows through the one-row ones
    prompt = "Distillery turns crawled pages into questions and answers, then trains a small model on them."
    default = probe("--generate", model, "--logits", "--prompt", prompt)
    forced = probe("--generate", model, "--logits", "--prompt", prompt, env_cpu="haswell")  # DISTILLERY_LLAMA_CPU=haswell
    expected = llama_build.best_variant(llama_build.cpu_flags(), built)
    assert default["loaded"] == expected, default
    assert forced["loaded"] == "haswell", forced
    # llama.cpp's own report of the loaded backend's instructions
    assert "AVX2 = 1" in forced["system_info"] and "AVX512 = 1" not in forced["system_info"], forced["system_info"]
    want_avx512 = "AVX512" in llama_build.VARIANTS[expected]
    assert ("AVX512 = 1" in default["system_info"]) == want_avx512, default["system_info"]
    assert "AMX" not in default["system_info"] + forced["system_info"]
    # q8_0 weights are repacked (Distillery's kernel, scripts/llama-cpp/) on AVX-512 VNNI variants only
    assert forced["repacked_mib"] == 0, forced
    assert (default["repacked_mib"] > 0) == ("AVX512_VNNI" in llama_build.VARIANTS[expected]), default
    assert len(default["tokens"]) == 16
    assert forced["tokens"] == default["tokens"]
    # close logits: on a 46-token batch llama.cpp's own AVX-512 and AVX2 code (norms, attention) differ
    # by up to 6e-3 of the largest logit (measured: skylakex, without the q8_0 kernel, vs haswell)
    a, b = np.array(default["logits"]), np.array(forced["logits"])
    assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max(), np.abs(a - b).max()
    if default["repacked_mib"] > 0 and "skylakex" in built:
        # the q8_0 kernel against llama.cpp's own q8_0 path on the same AVX-512 code otherwise
        # (skylakex: AVX-512 without VNNI): the integer dot products are exact in both, only the
        # order of the float sums differs (measured: 1.2e-7 of the largest logit)
        plain = probe("--generate", model, "--logits", "--prompt", prompt, env_cpu="skylakex")
        assert plain["loaded"] == "skylakex" and plain["repacked_mib"] == 0, plain
        assert plain["tokens"] == default["tokens"]
        c = np.array(plain["logits"])
        assert np.abs(a - c).max() <= 1e-5 * np.abs(a).max(), np.abs(a - c).max()


def test_forcing_a_variant_once_one_is_loaded_is_refused():
    need_variant_build()
    code = ("from pipeline.export import llama_build as b\n"
            "b.load_backends()\n"
            "try:\n    b.force_cpu_variant('haswell' if b.loaded_variant() != 'haswell' else 'alderlake')\n"
            "except RuntimeError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=stage_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: llama.cpp has already loaded its CPU backend" in proc.stdout, proc.stdout


def test_kernel_patch_inserts_once_and_names_a_missing_line(tmp_path):
    """scripts/llama-cpp/patch.py: the four insertions next to llama.cpp's exact lines, nothing more on
    a second run, and a source without one of the lines refused with that line, unchanged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llama_patch", Path(__file__).parents[2] / "scripts/llama-cpp/patch.py")
    patch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patch)
    cpu = tmp_path / "ggml/src/ggml-cpu"
    cpu.mkdir(parents=True)
    anchors = [anchor for anchor, _, _ in patch.EDITS]
    source = "\n".join(["// before"] + [line for a in anchors for line in (a, "// after")]) + "\n"
    (cpu / "repack.cpp").write_text(source)
    assert patch.patch(tmp_path) == "patched"
    once = (cpu / "repack.cpp").read_text()
    assert once.count(patch.MARK) == len(patch.EDITS) == 4 and (cpu / patch.KERNEL).is_file()
    assert once.index(anchors[0]) < once.index("#include <vector>") < once.index(f'#include "{patch.KERNEL}"') < once.index(anchors[1])
    assert once.index(anchors[2]) < once.index("q8_0_16x4_q8_0;") < once.index(anchors[3]) < once.index("return &q8_0_16x4_q8_0;")
    assert patch.patch(tmp_path) == "already patched" and (cpu / "repack.cpp").read_text() == once
    (cpu / "repack.cpp").write_text(source.replace(anchors[3] + "\n", ""))
    with pytest.raises(SystemExit, match="GGML_TYPE_Q8_0\\) \\{' once, found it 0 times"):
        patch.patch(tmp_path)
    assert patch.MARK not in (cpu / "repack.cpp").read_text()
