"""Benchmark: teacher throughput, vLLM engine vs sequential transformers generate, and the
cost of a fully cached rerun.

    .venv/bin/python bench/synth.py                  # after `make repro` (uses models/base)
    .venv/bin/python bench/synth.py --prompts 128 --max-tokens 64

The same think prompts (from data/dedup/split.jsonl's train questions, the synth stage's
template) go through pipeline.generation.engines' VLLMEngine and its TransformersEngine
backend, with the teacher of params.yaml (the tiny profile: the tiny base model). Printed
side by side: requests/s and generated tokens/s of each (engine start-up shown apart), then
the synth stage's Teacher run twice over a fresh cache: the first time, and a rerun that
finds everything cached (requests sent, seconds, and the rerun as a share of the first).

Targets: vLLM >= 5x sequential transformers; a cached rerun < 5% of the first run, 0 sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    from pipeline.config.params import load_params
    from pipeline.generation import tasks
    from pipeline.generation.engines import TransformersEngine, VLLMEngine
    from pipeline.generation.request_cache import RequestCache
    from pipeline.generation.teacher import Teacher, Template

    params = load_params(ROOT / "params.yaml")
    records = [json.loads(line) for line in (ROOT / "data/dedup/split.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = [r for r in records if r["split"] == "train" and r["kind"] in ("mcq", "qa")][:args.prompts]
    sampling = dataclasses.replace(params.synth.think.sampling, max_tokens=args.max_tokens)
    template = Template.load(str(ROOT / params.synth.think.template), "synth.think.template")
    requests = [tasks.think_request(r, template, sampling, params.synth.seed) for r in questions]
    teacher = dataclasses.replace(params.teacher, model=str(ROOT / params.teacher.model))

    started = time.perf_counter()
    engine = VLLMEngine.for_teacher(teacher, params.synth.seed)
    vllm_start = time.perf_counter() - started
    started = time.perf_counter()
    vllm_out = engine.generate(requests)
    vllm_s = time.perf_counter() - started

    started = time.perf_counter()
    hf = TransformersEngine.for_teacher(teacher, params.synth.seed)
    hf_start = time.perf_counter() - started
    started = time.perf_counter()
    hf_out = hf.generate(requests)
    hf_s = time.perf_counter() - started

    def tokens(results, tokenizer) -> int:
        return sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for r in results for o in r.outputs)

    vllm_tokens, hf_tokens = tokens(vllm_out, hf.tokenizer), tokens(hf_out, hf.tokenizer)
    print(f"teacher {teacher.name} ({params.teacher.model}), {len(requests)} think prompts, max_tokens {args.max_tokens}, "
          f"temperature {sampling.temperature}\n")
    print(f"{'backend':<26}{'start s':>9}{'gen s':>9}{'req/s':>9}{'tokens/s':>10}")
    print(f"{'vLLM engine (batched)':<26}{vllm_start:>9.1f}{vllm_s:>9.2f}{len(requests) / vllm_s:>9.1f}{vllm_tokens / vllm_s:>10.0f}")
    print(f"{'transformers (sequential)':<26}{hf_start:>9.1f}{hf_s:>9.2f}{len(requests) / hf_s:>9.1f}{hf_tokens / hf_s:>10.0f}")
    print(f"\nthroughput ratio vLLM/transformers: {(vllm_tokens / vllm_s) / (hf_tokens / hf_s):.1f}x in tokens/s, "
          f"{hf_s / vllm_s:.1f}x in requests/s (target >= 5x)")

    # the synth stage's Teacher over a fresh cache: a first run (on the engine started above,
    # its start-up counted), then a rerun that finds every request cached and starts nothing
    with tempfile.TemporaryDirectory() as tmp:
        cache = RequestCache(Path(tmp) / "requests.sqlite")
        first = Teacher(teacher, params.synth.seed, params.synth.chunk_size, cache)
        first.backend = engine
        started = time.perf_counter()
        first.run(requests, "bench")
        first_s = time.perf_counter() - started + vllm_start
        again = Teacher(teacher, params.synth.seed, params.synth.chunk_size, cache)
        started = time.perf_counter()
        again.run(requests, "bench")
        again_s = time.perf_counter() - started
        cache.close()
    print(f"\nsynth Teacher, first run: {first_s:.1f} s (engine start-up included), {first.counts['sent']} requests sent; "
          f"cached rerun: {again_s:.3f} s, {again.counts['sent']} sent, no engine started "
          f"({100 * again_s / first_s:.2f}% of the first; target < 5%, 0 sent)")


if __name__ == "__main__":
    main()
