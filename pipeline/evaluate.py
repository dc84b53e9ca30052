"""Stage evaluate: base vs tuned on the held-out test split.

- Held-out loss and perplexity over assistant tokens (the tokens train learns), token-weighted,
  for the base model and for base + adapter: metrics/eval.json, shown by `dvc exp show`.
- Greedy generations of both models for the first `eval.num_generations` test questions,
  with the reference answer and the source URL: reports/eval/generations.jsonl
  (one prediction record a line) and reports/eval/generations.md (for reading).

    python -m pipeline.evaluate       # reads params.yaml (dvc repro evaluate)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline import chat
from pipeline.config import Params, load_or_exit
from pipeline.train import ADAPTER_DIR, BASE_DIR, encode_records, load_split, load_tuned

METRICS = Path("metrics/eval.json")
REPORT_DIR = Path("reports/eval")


def heldout_loss(model, tokenizer, examples: list[dict], batch_size: int) -> tuple[float, int]:
    """Mean negative log-likelihood per assistant token, and the number of such tokens."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"])
            attn[i, :n] = 1
            labels[i, :n] = torch.tensor(ex["labels"])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                              ignore_index=-100, reduction="sum")
        total += nll.item()
        count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1), count


def generate(model, tokenizer, records: list[dict], system_prompt: str, max_new_tokens: int, name: str) -> list[dict]:
    import torch

    out = []
    for rec in records:
        prompt_msgs, reference = chat.prompt_and_reference(chat.record_to_messages(rec, system_prompt))
        prompt = chat.render_prompt(tokenizer, prompt_msgs)
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = gen[0, enc["input_ids"].shape[1]:]
        stopped = bool(len(new_tokens)) and int(new_tokens[-1]) in _eos_ids(model)
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        out.append({
            "id": rec["id"], "model": name, "source_url": rec["url"], "question": rec["question"],
            "reference": reference, "output": text, "parsed": chat.parse_output(text),
            "stopped": stopped, "new_tokens": len(new_tokens),
        })
    return out


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def write_report(rows: list[dict], report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    with (report_dir / "generations.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    lines = ["# Greedy generations on test questions", ""]
    for row in rows:
        lines += [f"## {row['id']} ({row['model']})", f"Source: {row['source_url']}", "",
                  f"**Question:** {row['question']}", "", f"**Reference:** {row['reference']}", "",
                  f"**Output** ({row['new_tokens']} tokens, {'stopped' if row['stopped'] else 'cut at max tokens'}):",
                  "", "```", row["output"], "```", ""]
    (report_dir / "generations.md").write_text("\n".join(lines), encoding="utf-8")


def evaluate(params: Params) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(params.seed)
    cfg = params.eval
    tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR)  # the tokenizer saved with the adapter
    test = sorted(load_split("test"), key=lambda r: r["id"])
    if not test:
        raise SystemExit("error: the test split is empty; check dedup.splits.test in params.yaml")
    examples, _ = encode_records(tokenizer, test, params.chat.system_prompt, params.train.max_seq_len)
    to_read = test[:cfg.num_generations]

    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    base_loss, tokens = heldout_loss(model, tokenizer, examples, cfg.batch_size)
    rows = generate(model, tokenizer, to_read, params.chat.system_prompt, cfg.max_new_tokens, "base")
    model = load_tuned(ADAPTER_DIR, BASE_DIR)  # merged onto the full-precision base (QLoRA too)
    tuned_loss, _ = heldout_loss(model, tokenizer, examples, cfg.batch_size)
    rows += generate(model, tokenizer, to_read, params.chat.system_prompt, cfg.max_new_tokens, "tuned")
    write_report(sorted(rows, key=lambda r: (r["id"], r["model"])), REPORT_DIR)

    def stop_rate(name: str) -> float:
        sel = [r for r in rows if r["model"] == name]
        return sum(r["stopped"] for r in sel) / max(len(sel), 1)

    return {
        "test_examples": len(examples),
        "test_tokens": tokens,
        "base": {"loss": base_loss, "perplexity": math.exp(base_loss), "stop_rate": stop_rate("base")},
        "tuned": {"loss": tuned_loss, "perplexity": math.exp(tuned_loss), "stop_rate": stop_rate("tuned")},
    }


def main() -> None:
    params = load_or_exit()
    metrics = evaluate(params)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"evaluate: held-out loss base {metrics['base']['loss']:.4f} -> tuned {metrics['tuned']['loss']:.4f}")


if __name__ == "__main__":
    main()
