"""Benchmark: the training loss with the output layer at labelled positions only, in chunks
(pipeline.train.loss.chunked_label_loss, what train uses) vs the model's own loss over every
position, side by side on the same batches, forward and backward, LoRA on the base.

    .venv/bin/python bench/head.py                  # models/base (gemma-3-270m after make repro)
    .venv/bin/python bench/head.py --steps 4 --rows data/sft/train.jsonl

The rows are the SFT training rows (chat template, label masks, packing into rows of
train.max_seq_len as train does them). Printed: tokens/s of each, the ratio, and the largest
relative difference of the two losses (they must agree).

Target: >= 1.5x tokens/s with the same loss (within 1e-4 relative) on the cpu profile.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--rows", default="data/sft/train.jsonl")
    parser.add_argument("--steps", type=int, default=6, help="batches timed per variant (after one warm-up)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=1024)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.data.records import encode_rows
    from pipeline.train.loss import chunked_label_loss
    from pipeline.train.packing import SFTCollator

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    with open(args.rows, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    examples, _ = encode_rows(tokenizer, rows, args.max_len)
    collate = SFTCollator(tokenizer.pad_token_id, pack=True, row_len=args.max_len)
    need = (args.steps + 1) * args.batch
    batches = [collate(examples[i:i + args.batch]) for i in range(0, min(need, len(examples)), args.batch)]
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    labelled = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches[1:])
    positions = sum(b["input_ids"].numel() for b in batches[1:])

    def full(batch):
        return model(**batch, use_cache=False).loss

    def heads(batch):
        return chunked_label_loss(model, batch)[0]

    results = {}
    for name, fn in (("all positions", full), ("labelled positions", heads)):
        losses = []
        fn(batches[0]).backward()  # warm-up
        model.zero_grad()
        start = time.perf_counter()
        for batch in batches[1:]:
            loss = fn(batch)
            loss.backward()
            model.zero_grad()
            losses.append(loss.item())
        elapsed = time.perf_counter() - start
        real = sum(int((b["input_ids"] != tokenizer.pad_token_id).sum()) for b in batches[1:])
        results[name] = (real / elapsed, losses)
        print(f"{name:>20}: {real / elapsed:8.1f} tokens/s over {len(batches) - 1} batches "
              f"({elapsed:.1f} s), mean loss {sum(losses) / len(losses):.5f}", flush=True)
    (full_speed, full_losses), (head_speed, head_losses) = results["all positions"], results["labelled positions"]
    rel = max(abs(a - b) / abs(a) for a, b in zip(full_losses, head_losses, strict=True))
    print(f"labelled positions: {labelled} of {positions} ({100 * labelled / positions:.0f}%); vocabulary "
          f"{model.get_output_embeddings().weight.shape[0]}")
    print(f"ratio: {head_speed / full_speed:.2f}x tokens/s (target >= 1.5x); max relative loss difference {rel:.1e} "
          f"(target <= 1e-4)")


if __name__ == "__main__":
    main()
