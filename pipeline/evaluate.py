"""Stage evaluate: base vs tuned on the held-out test split, and on external exam sets.

Generations through pipeline.engines (eval.backend `vllm`: one engine serves the base model
and, through a LoRARequest, base + adapter; an adapter with trained token rows, which vLLM
cannot apply as a LoRA module, is merged into a temporary copy served by a second engine;
`transformers`: generate, the adapter merged onto the full-precision base) with the same
prompts and sampling (greedy by default) for both:

- questions: the test split's crawled questions (system + question, as in training);
  think rate and length on all, exam accuracy (multiple-choice, per chapter) on those with
  options; the judge stage grades these answers against their references;
- tools: the test split's search conversations from synth (the search tool declared),
  scored for tool-call validity, the call / no-call decision against the label (confusion
  matrix) and BFCL-style argument match (pipeline.scoring);
- exam:<name>: each file in eval.exam_sets (C-Eval / MMLU style), through the same scorer.

Held-out loss and perplexity come from a forward pass over the test questions' reference
answers (the tokens train learns). A prompt that does not fit eval.max_model_len with
max_new_tokens is skipped and counted, not cut.

Writes metrics/eval.json (shown by `dvc exp show`), reports/eval/predictions.jsonl (one
prediction a line: id, set, model, output, parsed fields, scores, the source's URL) and
reports/eval/plots/decisions_{base,tuned}.csv (label vs decision, for `dvc plots`).

    python -m pipeline.evaluate       # reads params.yaml (dvc repro evaluate)
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
from pathlib import Path

from pipeline import chat, scoring
from pipeline.config import EvalConfig, Params, load_or_exit
from pipeline.engines import Result, TransformersEngine, VLLMEngine
from pipeline.evalsets import EvalSetError, load_eval_set
from pipeline.models import adapter_trains_tokens, load_tuned, merge, vllm_lora_rank
from pipeline.paths import ADAPTER_DIR, BASE_DIR, EVAL_METRICS, EVAL_REPORT_DIR, SFT_DIR
from pipeline.records import encode_records, load_split
from pipeline.request_cache import Request


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


# --- what is asked ----------------------------------------------------------------------

def question_item(rec: dict, system_prompt: str, set_name: str, think: bool = False) -> dict:
    prompt, reference = chat.prompt_and_reference(chat.record_to_messages(rec, system_prompt, think))
    return {"id": f"{set_name}/{rec['id']}", "set": set_name, "source_id": rec["id"], "url": rec.get("url"),
            "where": rec.get("where"), "messages": prompt, "tools": None, "question": prompt[-1]["content"],
            "reference": reference, "options": rec.get("options") or {}, "answer": rec.get("answer"),
            "chapter": rec.get("chapter") or ""}


def tool_item(row: dict) -> dict:
    """A synth search row as a prompt (system + question, the tools declared) and its label."""
    facts = row["search"]
    reference = {"name": "search", "arguments": {"query": facts["query"]}} if facts["needs_search"] else None
    return {"id": f"tools/{row['id']}", "set": "tools", "source_id": row["source_ids"][0], "url": row["urls"][0],
            "messages": row["messages"][:2], "tools": row["tools"], "question": row["messages"][1]["content"],
            "reference": row["messages"][-1]["content"], "needs_search": facts["needs_search"],
            "reference_call": reference}


def eval_items(params: Params, split_path: Path | None = None, sft_dir: Path = SFT_DIR) -> list[dict]:
    cfg, system = params.eval, params.chat.system_prompt
    questions = sorted(load_split("test", *([split_path] if split_path else [])), key=lambda r: r["id"])
    think = params.chat.think_from_explanation
    items = [question_item(r, system, "questions", think) for r in questions[:cfg.max_questions or None]]
    test_rows = sft_dir / "test.jsonl"
    if not test_rows.exists():
        sys.exit(f"error: no {test_rows} (run the synth stage first: dvc repro synth)")
    with test_rows.open(encoding="utf-8") as f:
        search = sorted((r for r in map(json.loads, f) if r["task"] == "search"), key=lambda r: r["id"])
    items += [tool_item(r) for r in search[:cfg.max_tool_prompts or None]]
    for path in cfg.exam_sets:
        try:
            recs = [r for r in load_eval_set(path) if r["kind"] == "mcq"]
        except (EvalSetError, OSError) as exc:
            sys.exit(f"error: eval.exam_sets: {exc}")
        items += [question_item(r, system, f"exam:{Path(path).stem}") for r in recs]
    return items


# --- generation ---------------------------------------------------------------------------

def _encode_prompts(tokenizer, items: list[dict]) -> list[list[int]]:
    return [tokenizer(chat.render_prompt(tokenizer, it["messages"], it["tools"]), add_special_tokens=False)["input_ids"]
            for it in items]


def generate(params: Params, backend: str, prompts: list[list[int]], work_dir: Path) -> dict[str, list[Result]]:
    """Greedy (or eval.temperature) generations of base and tuned for the same prompts, through
    pipeline.engines: vLLM with the adapter as a LoRA module on the same engine; vLLM on the
    adapter merged into a temporary checkpoint (in `work_dir`) when the adapter trains token
    rows, which vLLM cannot apply as a LoRA module (one engine after the other); or
    transformers, the adapter merged onto the full-precision base."""
    cfg = params.eval
    requests = [Request(messages=(), n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                        seed=params.seed, prompt_ids=tuple(p)) for p in prompts]
    vllm_args = dict(dtype=cfg.dtype, max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization,
                     enforce_eager=cfg.enforce_eager, seed=params.seed)
    if backend == "transformers":
        base = TransformersEngine(BASE_DIR, dtype="float32", max_model_len=cfg.max_model_len).generate(requests)
        tuned = TransformersEngine(BASE_DIR, dtype="float32", max_model_len=cfg.max_model_len,
                                   adapter=ADAPTER_DIR).generate(requests)
        return {"base": base, "tuned": tuned}
    if adapter_trains_tokens(ADAPTER_DIR):
        print("evaluate: the adapter trains token embeddings, which vLLM cannot apply as a LoRA module: "
              "the tuned model is the adapter merged into the base, in a second engine", flush=True)
        merge(BASE_DIR, ADAPTER_DIR, work_dir)
        outputs = {}
        for name, model_dir in (("base", BASE_DIR), ("tuned", work_dir)):
            engine = VLLMEngine(model_dir, **vllm_args)
            outputs[name] = engine.generate(requests)
            engine.close()
        return outputs
    try:
        rank = vllm_lora_rank(params.train.lora.r)
    except ValueError as exc:
        raise SystemExit(f"error: train.lora.r: {exc}; set eval.backend=transformers") from None
    engine = VLLMEngine(BASE_DIR, max_lora_rank=rank, **vllm_args)
    return {"base": engine.generate(requests), "tuned": engine.generate(requests, lora=ADAPTER_DIR)}


def eval_backend(cfg: EvalConfig) -> str:
    """The backend that runs: vLLM cannot load DoRA adapters, so those use transformers."""
    adapter = json.loads((ADAPTER_DIR / "adapter_config.json").read_text())
    if cfg.backend == "vllm" and adapter.get("use_dora"):
        print("evaluate: vLLM cannot load a DoRA adapter; generating with transformers", flush=True)
        return "transformers"
    return cfg.backend


# --- scoring ------------------------------------------------------------------------------

def score_row(item: dict, output: str) -> dict:
    scores = {"think_ok": scoring.think_stats([output])["rate"] == 1.0}
    if item["set"] == "tools":
        scores["label"] = "call" if item["needs_search"] else "no_call"
        scores["decision"] = "call" if chat.TOOL_CALL_OPEN in output.split(chat.IM_END, 1)[0] else "no_call"
    elif item["options"]:
        scores["choice"] = scoring.extract_choice(output, item["options"])
        scores["correct"] = scores["choice"] == item["answer"]
    return scores


def model_metrics(rows: list[dict], skipped: dict[str, int]) -> dict:
    def in_set(name):
        return [r for r in rows if r["set"] == name]

    questions = in_set("questions")
    metrics = {
        "stop_rate": sum(r["stopped"] for r in rows) / len(rows) if rows else None,
        "think": scoring.think_stats([r["output"] for r in questions]),
        "tools": scoring.tool_scores(in_set("tools")),
        "exam": scoring.exam_scores([r for r in questions if r["options"]]),
        "exam_sets": {},
    }
    for name in sorted({r["set"] for r in rows if r["set"].startswith("exam:")} | {s for s in skipped if s.startswith("exam:")}):
        metrics["exam_sets"][name.split(":", 1)[1]] = scoring.exam_scores(in_set(name))
    return metrics


def evaluate(params: Params) -> tuple[dict, list[dict]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(params.seed)
    cfg = params.eval
    tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR)  # the tokenizer saved with the adapter
    test = sorted(load_split("test"), key=lambda r: r["id"])
    if not test:
        raise SystemExit("error: the test split is empty; check dedup.splits.test in params.yaml")
    items = eval_items(params)

    # held-out loss: transformers, the adapter merged onto the full-precision base (QLoRA too)
    examples, _ = encode_records(tokenizer, test, params.chat.system_prompt, params.train.max_seq_len,
                                 params.chat.think_from_explanation)
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    base_loss, tokens = heldout_loss(model, tokenizer, examples, cfg.batch_size)
    model = load_tuned(ADAPTER_DIR, BASE_DIR)
    tuned_loss, _ = heldout_loss(model, tokenizer, examples, cfg.batch_size)
    del model

    prompts = _encode_prompts(tokenizer, items)
    fits = [i for i, p in enumerate(prompts) if len(p) + cfg.max_new_tokens <= cfg.max_model_len]
    skipped: dict[str, int] = {}
    for i in sorted(set(range(len(items))) - set(fits)):
        skipped[items[i]["set"]] = skipped.get(items[i]["set"], 0) + 1
    backend = eval_backend(cfg)
    with tempfile.TemporaryDirectory(prefix="merged-", dir=ADAPTER_DIR.parent) as tmp:
        outputs = generate(params, backend, [prompts[i] for i in fits], Path(tmp))
    rows = []
    for model_name in ("base", "tuned"):
        for i, result in zip(fits, outputs[model_name], strict=True):
            item = items[i]
            text, stopped, new_tokens = result.outputs[0], result.finished[0], result.tokens[0]
            rows.append({
                "id": item["id"], "set": item["set"], "model": model_name, "source_id": item["source_id"],
                "source_url": item.get("url") or item.get("where"), "question": item["question"],
                "reference": item["reference"], "options": item["options"] if item["set"] != "tools" else {},
                "answer": item.get("answer"), "chapter": item.get("chapter", ""), "tools": item["tools"],
                "needs_search": item.get("needs_search"), "reference_call": item.get("reference_call"),
                "output": text, "parsed": chat.parse_output(text), "stopped": stopped, "new_tokens": new_tokens,
                "scores": score_row(item, text),
            })
    metrics = {
        "backend": backend,
        "test_examples": len(examples),
        "test_tokens": tokens,
        "prompts": {s: sum(it["set"] == s for it in items) for s in sorted({it["set"] for it in items})},
        "skipped_too_long": skipped,
    }
    for model_name, loss in (("base", base_loss), ("tuned", tuned_loss)):
        metrics[model_name] = {"loss": loss, "perplexity": math.exp(loss),
                               **model_metrics([r for r in rows if r["model"] == model_name], skipped)}
    return metrics, rows


def write_outputs(metrics: dict, rows: list[dict], report_dir: Path = EVAL_REPORT_DIR) -> None:
    (report_dir / "plots").mkdir(parents=True, exist_ok=True)
    with (report_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row in sorted(rows, key=lambda r: (r["id"], r["model"])):
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    for model_name in ("base", "tuned"):
        with (report_dir / "plots" / f"decisions_{model_name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label", "decision"])
            for row in sorted(rows, key=lambda r: r["id"]):
                if row["set"] == "tools" and row["model"] == model_name:
                    writer.writerow([row["id"], row["scores"]["label"], row["scores"]["decision"]])
    EVAL_METRICS.parent.mkdir(parents=True, exist_ok=True)
    EVAL_METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main() -> None:
    params = load_or_exit()
    metrics, rows = evaluate(params)
    write_outputs(metrics, rows)
    b, t = metrics["base"], metrics["tuned"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    print(f"evaluate ({metrics['backend']}): held-out loss base {b['loss']:.4f} -> tuned {t['loss']:.4f}; "
          f"think {pct(b['think']['rate'])} -> {pct(t['think']['rate'])}; tool-call validity "
          f"{pct(b['tools']['validity'])} -> {pct(t['tools']['validity'])}; search decisions "
          f"{pct(b['tools']['decision_accuracy'])} -> {pct(t['tools']['decision_accuracy'])}; exam "
          f"{pct(b['exam']['accuracy'])} -> {pct(t['exam']['accuracy'])}; skipped (too long) {metrics['skipped_too_long']}")


if __name__ == "__main__":
    main()
