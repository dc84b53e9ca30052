"""The evaluation harness: held-out loss, multiple choice by log-likelihood, and generation (think,
tool calls through the one tool loop, search answers, exam sets) for the base and tuned models,
with every rate's count and interval. The stage is pipeline/stages/evaluate.py."""

from __future__ import annotations

import collections
import csv
import json
import math
import sys
import tempfile
from pathlib import Path

from pipeline.config import Sections
from pipeline.config.eval import EvalConfig
from pipeline.data import chat_format
from pipeline.data.evalsets import EvalSetError, load_eval_set
from pipeline.data.jsonl import read_jsonl
from pipeline.data.records import encode_records, load_sft, load_split, test_questions, written_test_questions
from pipeline.evaluation import knowledge, likelihood, scoring, stats
from pipeline.generation.engines import Result, TransformersEngine, VLLMEngine
from pipeline.generation.request_cache import Request
from pipeline.models.loading import adapter_trains_tokens, load_for_scoring, merge, vllm_lora_rank
from pipeline.paths import ADAPTER_DIR, BASE_DIR, EVAL_METRICS, EVAL_REPORT_DIR, INDEX, SFT_DIR, SPLIT
from pipeline.tools.loop import tool_loop
from pipeline.tools.search import SearchIndex, execute_call

MODELS = ("base", "tuned")


def heldout_loss(model, tokenizer, examples: list[dict], batch_size: int) -> tuple[float, int]:
    """Mean negative log-likelihood per assistant token, and the number of such tokens. Only the
    positions that predict a labelled token go through the output layer."""
    import torch

    total, count = 0.0, 0
    model.eval()
    device = model.device
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
        ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
        target = labels[:, 1:]
        wanted = target != -100
        with torch.no_grad():
            hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
            logp = likelihood.output_logprobs(model, hidden[wanted])
        total -= logp.gather(1, target[wanted][:, None]).sum().item()
        count += int(wanted.sum())
    return total / max(count, 1), count


# --- what is asked ----------------------------------------------------------------------

def question_item(rec: dict, system_prompt: str, set_name: str, think: bool = False) -> dict:
    prompt, reference = chat_format.prompt_and_reference(chat_format.record_to_messages(rec, system_prompt, think))
    return {"id": f"{set_name}/{rec['id']}", "set": set_name, "source_id": rec["id"], "url": rec.get("url"),
            "where": rec.get("where"), "messages": prompt, "tools": None, "question": prompt[-1]["content"],
            "reference": reference, "reference_answer": chat_format.gold_answer(rec), "options": rec.get("options") or {},
            "distractors": scoring.option_distractors(rec.get("options") or {}, rec.get("answer")),
            "answer": rec.get("answer"), "chapter": rec.get("chapter") or ""}


def tool_item(row: dict, records: dict[str, dict]) -> dict:
    """A synth search row as a prompt (system + question, the tools declared), its label, and the
    answer its source record gives (the row's own last turn where the record is not at hand)."""
    facts = row["search"]
    reference = {"name": "search", "arguments": {"query": facts["query"]}} if facts["needs_search"] else None
    source = records.get(row["source_ids"][0])
    gold = chat_format.gold_answer(source) if source else chat_format.parse_output(row["messages"][-1]["content"])["answer"]
    return {"id": f"tools/{row['id']}", "set": "tools", "source_id": row["source_ids"][0], "url": row["urls"][0],
            "messages": row["messages"][:2], "tools": row["tools"], "question": row["messages"][1]["content"],
            "reference": row["messages"][-1]["content"], "reference_answer": gold,
            "distractors": scoring.option_distractors(source.get("options") or {}, source.get("answer")) if source else (),
            "needs_search": facts["needs_search"], "reference_call": reference}


def exam_records(path: str) -> list[dict]:
    try:
        return [r for r in load_eval_set(path) if r["kind"] == "mcq"]
    except (EvalSetError, OSError) as exc:
        sys.exit(f"error: eval.exam_sets: {exc}")


def eval_items(params: Sections, split_path: Path | None = None, sft_dir: Path = SFT_DIR) -> list[dict]:
    cfg, system = params.eval, params.chat.system_prompt
    questions, source = test_questions(split_path or SPLIT, sft_dir)
    think = params.chat.think_from_explanation
    items = [question_item(r, system, "questions", think) for r in questions[:cfg.max_questions or None]]
    if source == "crawl":
        # beside the crawled questions, those the teacher wrote from the test split's sections
        # (a domain whose question bank is small and whose documents are many is judged on both)
        items += [question_item(r, system, "written", think)
                  for r in written_test_questions(sft_dir)[:cfg.max_questions or None]]
    test_rows = sft_dir / "test.jsonl"
    if not test_rows.exists():
        sys.exit(f"error: no {test_rows} (run the synth stage first: dvc repro synth)")
    with test_rows.open(encoding="utf-8") as f:
        search = sorted((r for r in map(json.loads, f) if r["task"] == "search"), key=lambda r: r["id"])
    by_id = {r["id"]: r for r in questions}
    items += [tool_item(r, by_id) for r in search[:cfg.max_tool_prompts or None]]
    for path in cfg.exam_files():
        items += [question_item(r, system, f"exam:{Path(path).stem}")
                  for r in exam_records(path)[:cfg.max_exam_prompts or None]]
    return items


def mc_sets(params: Sections, split_path: Path | None = None) -> dict[str, list[dict]]:
    """The multiple-choice items scored by log-likelihood: the test split's (`questions`) and
    each exam set's (by file stem). Only items whose answer is one of their options."""
    test, _ = test_questions(split_path or SPLIT)
    sets = {"questions": test}
    for path in params.eval.exam_files():
        sets[Path(path).stem] = exam_records(path)
    return {name: [r for r in recs if r.get("options") and r.get("answer") in r["options"]]
            for name, recs in sets.items()}


# --- knowledge: multiple choice by log-likelihood -----------------------------------------

def mc_run(model, tokenizer, params: Sections, sets: dict[str, list[dict]], shots: list[dict],
           model_name: str) -> tuple[dict, list[dict]]:
    """mc.<set>.<framing>.<k>shot figures of one model, and one row per item and setting."""
    model.eval()
    scorer = likelihood.Scorer(model)
    cfg = params.eval
    metrics: dict = {}
    rows = []
    for set_name, records in sets.items():
        for framing in cfg.mc.framings:
            cap = cfg.mc.max_listed_items if framing in likelihood.LISTED else 0
            for k in (0, cfg.mc.shots):
                scored, skipped = likelihood.score_items(
                    scorer, tokenizer, records[:cap or None], framing, shots[:k], params.chat.system_prompt,
                    params.chat.think_from_explanation, cfg.max_model_len)
                n = len(scored)
                hits, hits_norm = sum(r["correct"] for r in scored), sum(r["correct_norm"] for r in scored)
                metrics.setdefault(set_name, {}).setdefault(framing, {})[f"{k}shot"] = {
                    "acc": hits / n if n else None, "acc_norm": hits_norm / n if n else None, "n": n,
                    "ci95": stats.wilson(hits, n), "acc_norm_ci95": stats.wilson(hits_norm, n),
                    # what a blind guess scores: the mean of 1 / options over the items scored
                    "chance": sum(1 / len(r["text_ll"]) for r in scored) / n if n else None,
                    "skipped_too_long": skipped, "shots": len(shots[:k])}
                rows += [{"set": set_name, "framing": framing, "shots": k, "model": model_name, **r} for r in scored]
    print(f"evaluate: {model_name}: multiple choice by log-likelihood, {scorer.forward_tokens} tokens through the model",
          flush=True)
    return metrics, rows


# --- behaviour: generation, search conversations to the end ----------------------------------

def _encode(tokenizer, messages: list[dict], tools: list[dict] | None, enable_thinking: bool | None = None) -> list[int]:
    return tokenizer(chat_format.render_prompt(tokenizer, messages, tools, enable_thinking), add_special_tokens=False)["input_ids"]


def _model_turn(output: str) -> str:
    """The model's own turn as it goes back into the conversation: its text up to the end of turn."""
    return output.split(chat_format.IM_END, 1)[0]


def converse(generate, tokenizer, items: list[dict], params: Sections, index: SearchIndex | None) -> list[dict]:
    """Every item's first answer; for items with tools declared, the conversation run on: while
    the model calls the search tool (and eval.max_tool_rounds allows), each call runs on the
    index and its result is the next turn. Items whose prompt does not fit come back as None."""
    cfg = params.eval

    def requests(prompts: list[list[int]]) -> list[Request]:
        return [Request(messages=(), n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                        seed=params.seed, prompt_ids=tuple(p)) for p in prompts]

    def fits(ids: list[int]) -> bool:
        return len(ids) + cfg.max_new_tokens <= cfg.max_model_len

    convs = [list(it["messages"]) for it in items]
    prompts = [_encode(tokenizer, c, it["tools"], cfg.enable_thinking) for c, it in zip(convs, items, strict=True)]
    live = [i for i, p in enumerate(prompts) if fits(p)]
    turns: dict[int, list[Result]] = {i: [] for i in live}

    def respond(conversations: list[int]) -> list[list[dict]]:
        results = generate(requests([prompts[live[j]] for j in conversations]))
        calls = []
        for j, result in zip(conversations, results, strict=True):
            i = live[j]
            turns[i].append(result)
            text = result.outputs[0] if result.outputs else ""
            calls.append(chat_format.parse_output(text)["tool_calls"] if items[i]["tools"] else [])
        return calls

    def act(j: int, calls: list[dict]) -> str | None:
        i = live[j]
        text = turns[i][-1].outputs[0] if turns[i][-1].outputs else ""
        convs[i].append({"role": "assistant", "content": _model_turn(text)})
        for call in calls:
            convs[i].append({"role": "tool", "content": execute_call(call, index, params.search.top_k,
                                                                     params.search.snippet_chars)})
        prompts[i] = _encode(tokenizer, convs[i], items[i]["tools"], cfg.enable_thinking)
        return None if fits(prompts[i]) else "context_full"

    ends = {live[j]: end for j, end in tool_loop(len(live), respond, act, cfg.max_tool_rounds).items()}
    out = [None] * len(items)
    for i, results in turns.items():
        texts = [r.outputs[0] if r.outputs else "" for r in results]
        out[i] = {"turns": texts, "stopped": results[-1].finished[0] if results[-1].finished else False,
                  "first_stopped": results[0].finished[0] if results[0].finished else False,
                  "new_tokens": sum(r.tokens[0] for r in results if r.tokens), "end": ends[i],
                  "rounds": len(texts) - 1, "tool_responses": [m["content"] for m in convs[i] if m["role"] == "tool"],
                  "error": next((r.error for r in results if r.error), None)}
    return out


def generate_all(params: Sections, backend: str, tokenizer, items: list[dict], work_dir: Path,
                 device: str = "cpu") -> dict[str, list]:
    """`converse` for base and tuned with the same prompts and sampling, through pipeline.generation.engines:
    vLLM with the adapter as a LoRA module on the same engine; vLLM on the adapter merged into a
    temporary checkpoint (in `work_dir`) when the adapter trains token rows, which vLLM cannot
    apply as a LoRA module (one engine after the other); or transformers, the adapter merged onto
    the full-precision base."""
    cfg = params.eval
    index = SearchIndex(INDEX) if any(it["tools"] for it in items) else None
    vllm_args = dict(dtype=cfg.dtype, max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization,
                     enforce_eager=cfg.enforce_eager, seed=params.seed, device=device)
    try:
        if backend == "transformers":
            return {name: converse(TransformersEngine(BASE_DIR, dtype="float32" if device == "cpu" else cfg.dtype,
                                                      max_model_len=cfg.max_model_len, device=device,
                                                      adapter=ADAPTER_DIR if name == "tuned" else None).generate,
                                   tokenizer, items, params, index) for name in MODELS}
        if adapter_trains_tokens(ADAPTER_DIR):
            print("evaluate: the adapter trains token embeddings, which vLLM cannot apply as a LoRA module: "
                  "the tuned model is the adapter merged into the base, in a second engine", flush=True)
            merge(BASE_DIR, ADAPTER_DIR, work_dir)
            outputs = {}
            for name, model_dir in (("base", BASE_DIR), ("tuned", work_dir)):
                engine = VLLMEngine(model_dir, **vllm_args)
                outputs[name] = converse(engine.generate, tokenizer, items, params, index)
                engine.close()
            return outputs
        try:
            rank = vllm_lora_rank(params.train.lora.r)
        except ValueError as exc:
            raise SystemExit(f"error: train.lora.r: {exc}; set eval.backend=transformers") from None
        engine = VLLMEngine(BASE_DIR, max_lora_rank=rank, **vllm_args)
        return {"base": converse(engine.generate, tokenizer, items, params, index),
                "tuned": converse(lambda reqs: engine.generate(reqs, lora=ADAPTER_DIR), tokenizer, items, params, index)}
    finally:
        if index is not None:
            index.close()


def eval_backend(cfg: EvalConfig) -> str:
    """The backend that runs: vLLM cannot load DoRA adapters, so those use transformers."""
    adapter = json.loads((ADAPTER_DIR / "adapter_config.json").read_text())
    if cfg.backend == "vllm" and adapter.get("use_dora"):
        print("evaluate: vLLM cannot load a DoRA adapter; generating with transformers", flush=True)
        return "transformers"
    return cfg.backend


# --- scoring ------------------------------------------------------------------------------

def score_row(item: dict, output: str, final_answer: str) -> dict:
    scores = {"think_ok": scoring.think_stats([output])["rate"] == 1.0}
    if item["set"] == "tools":
        scores["label"] = "call" if item["needs_search"] else "no_call"
        scores["decision"] = "call" if chat_format.TOOL_CALL_OPEN in output.split(chat_format.IM_END, 1)[0] else "no_call"
    elif item["options"]:
        scores["choice"] = scoring.extract_choice(output, item["options"])
        scores["correct"] = scores["choice"] == item["answer"]
    scores.update(scoring.free_form(final_answer, item["reference_answer"], item["distractors"]))
    return scores


def _rate(flags: list[bool]) -> dict:
    return stats.rate(sum(flags), len(flags))


def model_metrics(rows: list[dict], skipped: dict[str, int]) -> dict:
    def in_set(name):
        return [r for r in rows if r["set"] == name]

    questions = in_set("questions")
    sets = sorted({r["set"] for r in rows})
    search = in_set("tools")
    tools = scoring.tool_scores(search)
    tools.update(n=len(search), validity_ci95=stats.wilson(tools["valid_attempts"], tools["call_attempts"]),
                 argument_match_ci95=stats.wilson(tools["argument_matched"], tools["argument_compared"]),
                 decision_accuracy_ci95=stats.wilson(
                     sum(r["scores"]["label"] == r["scores"]["decision"] for r in search), len(search)))
    answered = _rate([r["scores"]["contains"] for r in search])
    rounds = [r["rounds"] for r in search]
    metrics = {
        "stop_rate": sum(r["stopped"] for r in rows) / len(rows) if rows else None,
        "stop": _rate([r["stopped"] for r in rows]),
        "think": {**scoring.think_stats([r["output"] for r in questions]), "n": len(questions),
                  "ci95": stats.wilson(sum(r["scores"]["think_ok"] for r in questions), len(questions)),
                  "by_set": {s: {**_rate([r["scores"]["think_ok"] for r in in_set(s)]),
                                 "mean_chars": scoring.think_stats([r["output"] for r in in_set(s)])["mean_chars"]}
                             for s in sets}},
        "stop_by_set": {s: _rate([r["stopped"] for r in in_set(s)]) for s in sets},
        # every turn that follows a tool response (the reasoning over the results, then the answer)
        "think_after_tool": {**_rate([scoring.think_stats([t])["rate"] == 1.0 for r in search for t in r["turns"][1:]]),
                             "mean_chars": scoring.think_stats([t for r in search for t in r["turns"][1:]])["mean_chars"]},
        "tools": tools,
        "search_answer": {"accuracy": answered["rate"], "k": answered["k"], "n": answered["n"],
                          "ci95": answered["ci95"],
                          "f1": sum(r["scores"]["f1"] for r in search) / len(search) if search else None,
                          "rounds": {"mean": sum(rounds) / len(rounds) if rounds else None,
                                     "histogram": {str(k): rounds.count(k) for k in sorted(set(rounds))}},
                          "ends": {e: sum(r["end"] == e for r in search) for e in sorted({r["end"] for r in search})},
                          "by_label": {label: _rate([r["scores"]["contains"] for r in search
                                                     if r["needs_search"] == (label == "call")])
                                       for label in ("call", "no_call")}},
        "free_form": {s: scoring.free_form_scores([{"answer": r["final_answer"], "reference_answer": r["reference_answer"],
                                                    "distractors": r["distractors"]}
                                                   for r in in_set(s)]) for s in sets},
        "exam": {**scoring.exam_scores([r for r in questions if r["options"]]), "method": "generation"},
        "exam_sets": {},
    }
    exam = [r for r in questions if r["options"]]
    metrics["exam"]["ci95"] = stats.wilson(sum(r["scores"]["correct"] for r in exam), len(exam))
    for name in sorted({r["set"] for r in rows if r["set"].startswith("exam:")} | {s for s in skipped if s.startswith("exam:")}):
        scored = in_set(name)
        metrics["exam_sets"][name.split(":", 1)[1]] = {**scoring.exam_scores(scored), "method": "generation",
                                                       "ci95": stats.wilson(sum(r["scores"]["correct"] for r in scored),
                                                                            len(scored))}
    return metrics


def _paired_flags(rows: list[dict], key) -> tuple[list[bool], list[bool]]:
    """Per item id answered by both models: (base flag, tuned flag), in id order."""
    by = {m: {r["id"]: key(r) for r in rows if r["model"] == m} for m in MODELS}
    ids = sorted(set(by["base"]) & set(by["tuned"]))
    return [by["base"][i] for i in ids], [by["tuned"][i] for i in ids]


def comparisons(rows: list[dict], mc_rows: list[dict], metrics: dict) -> dict:
    """comparison.<figure>: tuned vs base on the same items (McNemar, Newcombe); validity, a share
    of the calls each model chose to make, unpaired (Fisher)."""
    out = {}
    settings = sorted({(r["set"], r["framing"], r["shots"]) for r in mc_rows})
    for set_name, framing, k in settings:
        chosen = [r for r in mc_rows if (r["set"], r["framing"], r["shots"]) == (set_name, framing, k)]
        for figure, key in (("acc", "correct"), ("acc_norm", "correct_norm")):
            out[f"mc.{set_name}.{framing}.{k}shot.{figure}"] = stats.paired(*_paired_flags(chosen, lambda r: r[key]))
    sets = sorted({r["set"] for r in rows})
    for s in sets:
        in_set = [r for r in rows if r["set"] == s]
        out[f"think.{s}"] = stats.paired(*_paired_flags(in_set, lambda r: r["scores"]["think_ok"]))
        out[f"stop.{s}"] = stats.paired(*_paired_flags(in_set, lambda r: r["stopped"]))
        out[f"free_form.{s}.exact"] = stats.paired(*_paired_flags(in_set, lambda r: r["scores"]["exact"]))
        out[f"free_form.{s}.contains"] = stats.paired(*_paired_flags(in_set, lambda r: r["scores"]["contains"]))
        if s == "questions" or s.startswith("exam:"):
            with_options = [r for r in in_set if r["options"]]
            name = "exam_generation" if s == "questions" else f"exam_generation.{s.split(':', 1)[1]}"
            out[name] = stats.paired(*_paired_flags(with_options, lambda r: r["scores"]["correct"]))
    tools = [r for r in rows if r["set"] == "tools"]
    out["search_answer"] = stats.paired(*_paired_flags(tools, lambda r: r["scores"]["contains"]))
    out["tools.decision_accuracy"] = stats.paired(
        *_paired_flags(tools, lambda r: r["scores"]["label"] == r["scores"]["decision"]))
    t, b = metrics["tuned"]["tools"], metrics["base"]["tools"]
    out["tools.validity"] = stats.unpaired(t["valid_attempts"], t["call_attempts"], b["valid_attempts"], b["call_attempts"])
    ta, ba = metrics["tuned"]["think_after_tool"], metrics["base"]["think_after_tool"]
    out["think_after_tool"] = stats.unpaired(ta["k"], ta["n"], ba["k"], ba["n"])
    return {k: v for k, v in out.items() if v is not None}


def evaluate(params: Sections, device: str = "cpu") -> tuple[dict, list[dict], list[dict], list[dict]]:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(params.seed)
    cfg = params.eval
    tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR)  # the tokenizer saved with the adapter
    test, source = test_questions()
    if not test:
        raise SystemExit(f"error: no test questions: the test split of {SPLIT} holds no question, and the teacher "
                         f"wrote none from its sections ({SFT_DIR / 'test.jsonl'} has no valid qgen row); check "
                         "dedup.splits.test in params.yaml, and synth's qgen rejects in metrics/synth.json")
    items = eval_items(params)
    sets = mc_sets(params)
    shots = likelihood.pick_shots(load_split("train"), cfg.mc.shots)
    # knowledge: the test questions' facts, both ways, cloze and ranked (pipeline.evaluation.knowledge)
    know_items, know_left_out = knowledge.build_items(
        test, [r for r in load_sft("test") if r["task"] == "reverse"], read_jsonl(SPLIT),
        [r for r in load_sft("train") if r["task"] == "text"])

    # held-out loss and multiple choice: transformers, the adapter merged onto the full-precision
    # base (QLoRA too); float32 on the CPU, eval.dtype on a GPU
    examples, _ = encode_records(tokenizer, test, params.chat.system_prompt, params.train.max_seq_len,
                                 params.chat.think_from_explanation)
    losses, mc, mc_rows, know_rows = {}, {}, [], []
    for name in MODELS:
        model = load_for_scoring(device, cfg.dtype, None if name == "base" else ADAPTER_DIR)
        losses[name], tokens = heldout_loss(model, tokenizer, examples, cfg.batch_size)
        mc[name], rows = mc_run(model, tokenizer, params, sets, shots, name)
        mc_rows += rows
        # two items a batch: up to 24 candidates each, and a large vocabulary's output rows per token
        know_rows += [{**r, "model": name} for r in knowledge.score(likelihood.Scorer(model, batch_size=2), tokenizer,
                                                                     know_items, cfg.max_model_len)]
        del model
        if device == "cuda":
            torch.cuda.empty_cache()  # the vLLM engines below take their share of what is free

    backend = eval_backend(cfg)
    with tempfile.TemporaryDirectory(prefix="merged-", dir=ADAPTER_DIR.parent) as tmp:
        outputs = generate_all(params, backend, tokenizer, items, Path(tmp), device)
    skipped: dict[str, int] = {}
    for i, item in enumerate(items):
        if outputs["base"][i] is None:
            skipped[item["set"]] = skipped.get(item["set"], 0) + 1
    rows = []
    for model_name in MODELS:
        for item, conv in zip(items, outputs[model_name], strict=True):
            if conv is None:
                continue
            text = conv["turns"][0]
            final = chat_format.parse_output(conv["turns"][-1])["answer"]
            rows.append({
                "id": item["id"], "set": item["set"], "model": model_name, "source_id": item["source_id"],
                "source_url": item.get("url") or item.get("where"), "question": item["question"],
                "reference": item["reference"], "reference_answer": item["reference_answer"],
                "distractors": list(item["distractors"]),
                "options": item["options"] if item["set"] != "tools" else {},
                "answer": item.get("answer"), "chapter": item.get("chapter", ""), "tools": item["tools"],
                "needs_search": item.get("needs_search"), "reference_call": item.get("reference_call"),
                "output": text, "parsed": chat_format.parse_output(text), "stopped": conv["first_stopped"],
                "new_tokens": conv["new_tokens"], "turns": conv["turns"], "tool_responses": conv["tool_responses"],
                "rounds": conv["rounds"], "end": conv["end"], "final_answer": final,
                "scores": score_row(item, text, final),
            })
    metrics = {
        "backend": backend,
        "test_examples": len(examples),
        # a domain of documents only: the questions are the teacher's, from held-out sections
        **({"test_questions_from": "teacher (qgen rows of the test split's sections)"} if source == "teacher" else {}),
        "test_tokens": tokens,
        "prompts": {s: sum(it["set"] == s for it in items) for s in sorted({it["set"] for it in items})},
        "skipped_too_long": skipped,
        "mc_items": {name: len(recs) for name, recs in sets.items()},
        # the sets outside the domain (eval.general_sets): what tuning must not make the model forget
        "general_sets": [Path(p).stem for p in cfg.general_sets],
        "mc_shots": [r["id"] for r in shots],
    }
    know = knowledge.compare(know_rows)
    metrics["knowledge"] = {"items": dict(sorted(collections.Counter(i["direction"] for i in know_items).items())),
                            "groups": dict(sorted(collections.Counter(i["group"] for i in know_items).items())),
                            "left_out": know_left_out, "power": know["power"]}
    for model_name in MODELS:
        metrics[model_name] = {"loss": losses[model_name], "perplexity": math.exp(losses[model_name]),
                               "mc": mc[model_name],
                               "knowledge": knowledge.summary([r for r in know_rows if r["model"] == model_name]),
                               **model_metrics([r for r in rows if r["model"] == model_name], skipped)}
    metrics["comparison"] = {**comparisons(rows, mc_rows, metrics), **know["comparison"]}
    return metrics, rows, mc_rows, know_rows


def write_outputs(metrics: dict, rows: list[dict], mc_rows: list[dict], know_rows: list[dict],
                  report_dir: Path = EVAL_REPORT_DIR) -> None:
    (report_dir / "plots").mkdir(parents=True, exist_ok=True)
    with (report_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row in sorted(rows, key=lambda r: (r["id"], r["model"])):
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    with (report_dir / "mc.jsonl").open("w", encoding="utf-8") as f:
        for row in sorted(mc_rows, key=lambda r: (r["set"], r["framing"], r["shots"], r["id"], r["model"])):
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    with (report_dir / "knowledge.jsonl").open("w", encoding="utf-8") as f:
        for row in sorted(know_rows, key=lambda r: (r["id"], r["model"])):
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    for model_name in MODELS:
        with (report_dir / "plots" / f"decisions_{model_name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label", "decision"])
            for row in sorted(rows, key=lambda r: r["id"]):
                if row["set"] == "tools" and row["model"] == model_name:
                    writer.writerow([row["id"], row["scores"]["label"], row["scores"]["decision"]])
    EVAL_METRICS.parent.mkdir(parents=True, exist_ok=True)
    EVAL_METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
