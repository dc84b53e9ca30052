"""Benchmark: multiple-choice log-likelihoods with pipeline.evaluation.likelihood.Scorer (what evaluate
uses: the shared prefix computed once, items batched by length, the output layer only at the
positions that predict a continuation) vs the plain way lm-evaluation-harness's HF model does
it (one forward pass per context + continuation, log-softmax over the whole vocabulary at every
position), side by side on the same items.

    .venv/bin/python bench/likelihood.py              # models/base (gemma-3-270m after make repro)
    .venv/bin/python bench/likelihood.py --items 8 --shots 5 --set evalsets/general_mc.csv

Items: the first --items multiple-choice questions of --set after the --shots used as shots,
plain framing, letters and option texts. Printed: seconds of each, the ratio, and the largest
difference of the two log-likelihoods (they must agree).

Target: >= 3x faster with the same log-likelihoods (within 1e-3) on the cpu profile.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--set", default="evalsets/general_mc.csv")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.data.evalsets import load_eval_set
    from pipeline.evaluation import likelihood

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    records = [r for r in load_eval_set(args.set) if r["kind"] == "mcq"]
    shots, items = records[:args.shots], records[args.shots:args.shots + args.items]
    encoded = []
    for rec in items:
        letters, texts = likelihood.continuations(rec, "plain")
        encoded.append(likelihood.encode_pair(tokenizer, likelihood.plain_context(rec, shots), letters + texts, True))

    t0 = time.perf_counter()
    scorer = likelihood.Scorer(model)
    ours = scorer.loglikelihoods(encoded)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    plain = []
    with torch.no_grad():
        for enc in encoded:
            lls = []
            for cont in enc.continuations:
                ids = enc.context + cont
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
                lls.append(sum(float(logp[len(enc.context) - 1 + k, t]) for k, t in enumerate(cont)))
            plain.append(lls)
    t_plain = time.perf_counter() - t0

    diff = max(abs(a - b) for x, y in zip(ours, plain, strict=True) for a, b in zip(x, y, strict=True))
    n = sum(len(e.continuations) for e in encoded)
    print(f"{len(items)} items, {n} continuations, {args.shots} shots, {args.base}")
    print(f"plain (full forward and log-softmax per continuation): {t_plain:.1f} s")
    print(f"pipeline.evaluation.likelihood.Scorer:                            {t_ours:.1f} s ({scorer.forward_tokens} tokens)")
    print(f"ratio: {t_plain / t_ours:.2f}x; largest log-likelihood difference {diff:.2e}")


if __name__ == "__main__":
    main()
