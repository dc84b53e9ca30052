"""Benchmark: training throughput packed vs padded on length-skewed data, and peak memory of
LoRA vs QLoRA on the same model, side by side in one run.

    .venv/bin/python bench/train.py                 # about 5 minutes on 2 CPU cores
    .venv/bin/python bench/train.py --steps 20 --memory-steps 2

Every variant runs in its own process (peak RSS is per process) through the train stage's own
code (pipeline.models.load_base, pipeline.train.build_trainer, pipeline.train.packing's collator):

- speed: a randomly initialised Llama (hidden 256, 4 layers) trained for the same steps on
  the same examples, batch 16, padded to each batch's longest example vs packed into rows of
  512 tokens. Lengths are skewed (80% of 16..96 tokens, 20% of 256..512), tokens Zipf-
  distributed so that the loss has something to learn. Printed: real (non-pad) tokens/s and
  the final eval loss of each.
- memory: a larger random Llama (hidden 1024, 8 layers, 126M parameters) trained a few steps
  (batch 4, up to 128 tokens, packed) with LoRA on the float32 base and with QLoRA on the NF4
  base; peak RSS of each.

Targets: packed >= 1.5x padded tokens/s with eval loss within 5%; QLoRA peak memory below LoRA's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEED_MODEL = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
               "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 4000}
MEMORY_MODEL = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
                "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 16000}


def examples(count: int, vocab: int, seed: int, longest: int = 512) -> list[dict]:
    """Length-skewed examples (80% of 16..96 tokens, 20% of longest/2..longest); the first
    quarter of each is prompt (no labels)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(longest // 2, longest + 1)) if rng.random() < 0.2 else int(rng.integers(16, 97))
        ids = (np.minimum(rng.zipf(1.3, n), vocab - 3) + 2).tolist()  # ids 0 and 1: pad and eos
        out.append({"input_ids": ids, "labels": [-100] * (n // 4) + ids[n // 4:]})
    return out


def word_tokenizer(vocab: int):
    """A tokenizer the trainer can carry (pad id, saving); the examples are already ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="t2")),
                                   pad_token="t0", eos_token="t1")


def train_config(path: Path, steps: int, batch: int, packing: bool, qlora: bool):
    """The real conf/ composed (default profile) with the bench's shape: one evaluation, at the end."""
    from pipeline.config.compose import compose
    from pipeline.config.params import load_params

    compose([f"train={'qlora' if qlora else 'lora'}", f"train.max_steps={steps}", f"train.packing={packing}",
             f"train.batch_size={batch}", "train.grad_accum=1", "train.max_seq_len=512", f"train.eval_steps={steps}",
             "train.logging_steps=10"], out=path, conf_dir=ROOT / "conf")
    return load_params(path).train


def run_variant(variant: str, steps: int, workdir: Path) -> dict:
    """One training run in this process: what the parent prints."""
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models.loading import load_base
    from pipeline.train.trainer import build_trainer

    memory_run = variant in ("lora", "qlora")
    shape = MEMORY_MODEL if memory_run else SPEED_MODEL
    # Memory runs: short rows and small batches, so that the weights, not activations, dominate.
    batch, longest = (4, 128) if memory_run else (16, 512)
    base = workdir / f"base-{shape['hidden_size']}"
    if not base.exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=512, pad_token_id=0, eos_token_id=1)).save_pretrained(base)
    cfg = train_config(workdir / f"params-{variant}.yaml", steps, batch, packing=variant != "padded",
                       qlora=variant == "qlora")
    train = examples(batch * steps, shape["vocab_size"], seed=1, longest=longest)
    val = examples(64, shape["vocab_size"], seed=2, longest=longest)
    trainer = build_trainer(load_base(cfg, base), word_tokenizer(shape["vocab_size"]), train, val, cfg,
                            output_dir=workdir / f"out-{variant}")
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "variant": variant,
        "tokens_per_s": trainer.state.num_input_tokens_seen / seconds,
        "eval_loss": trainer.evaluate()["eval_loss"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the speed runs")
    parser.add_argument("--memory-steps", type=int, default=3, help="optimizer steps of the memory runs")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.steps, Path(args.workdir))))
        return

    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for variant, steps in (("padded", args.steps), ("packed", args.steps),
                               ("lora", args.memory_steps), ("qlora", args.memory_steps)):
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(steps),
                                   "--workdir", workdir], capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"bench: the {variant} run failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(line[len("RESULT "):])
            r = results[variant]
            print(f"{variant:>7}: {r['tokens_per_s']:8.0f} tokens/s  eval loss {r['eval_loss']:.4f}  "
                  f"peak RSS {r['peak_rss_mib']:7.0f} MiB  ({r['seconds']:.1f} s)", flush=True)

    padded, packed, lora, qlora = (results[k] for k in ("padded", "packed", "lora", "qlora"))
    speedup = packed["tokens_per_s"] / padded["tokens_per_s"]
    loss_gap = abs(packed["eval_loss"] - padded["eval_loss"]) / padded["eval_loss"]
    memory = qlora["peak_rss_mib"] / lora["peak_rss_mib"]
    print(f"\npacked vs padded: {speedup:.2f}x tokens/s (target >= 1.5x), eval loss differs by "
          f"{100 * loss_gap:.2f}% (target < 5%)")
    print(f"QLoRA vs LoRA peak RSS: {qlora['peak_rss_mib']:.0f} vs {lora['peak_rss_mib']:.0f} MiB = {memory:.2f}x "
          f"(target < 1)")
    ok = speedup >= 1.5 and loss_gap < 0.05 and memory < 1.0
    print("targets met" if ok else "TARGETS MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
