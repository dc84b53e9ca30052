"""Stage synth: the teacher writes think, search and qgen rows for the train, val and test splits.

Reads data/dedup/split.jsonl, the search index and params.yaml (teacher, synth, search,
chat); writes data/sft/{train,val,test}.jsonl (OpenAI messages with tools declared, loadable by
`datasets.load_dataset("json", ...)`), data/sft/rejects.jsonl (with reasons) and
metrics/synth.json. Every request goes through the cache in data/synth_cache first; only
the missing ones reach the teacher, chunk by chunk.

Row: id, source_ids, task (plain | think | search | qgen), split, messages, tools,
provenance {teacher, model, backend, template, template_sha256, sampling, seed, request_key},
urls (lineage back to the crawl), valid, reject_reason, and for search rows the label, its
source, the query and the passages the tool response holds.
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
import time
from pathlib import Path

from pipeline import chat
from pipeline.config import Params, load_or_exit
from pipeline.paths import INDEX, SFT_DIR, SPLIT, SYNTH_CACHE, SYNTH_METRICS
from pipeline.request_cache import Request, RequestCache
from pipeline.search import SEARCH_TOOL, SearchIndex
from pipeline.synth import tasks
from pipeline.teacher import Teacher, Template
# Every split gets rows: train and val for training, test for evaluation (its search rows
# carry the labels the tool-call metrics are scored against). Sources never cross splits.
SPLITS = ("train", "val", "test")


def _provenance(params: Params, model: str, tpl: Template, req: Request) -> dict:
    t = params.teacher
    return {"teacher": t.name, "model": model, "backend": t.backend, "template": tpl.path,
            "template_sha256": tpl.sha256, "sampling": req.sampling(), "seed": req.seed,
            "request_key": req.key(model)}


def _keep_share(row_id: str, share: float) -> bool:
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") / 2**64 < share


def synthesize(params: Params, records: list[dict], index, cache: RequestCache) -> tuple[list[dict], dict]:
    """All rows (valid and rejected) and the metrics."""
    cfg, system = params.synth, params.chat.system_prompt
    teacher = Teacher(params.teacher, cfg.seed, cfg.chunk_size, cache)
    sources = [r for r in records if r["split"] in SPLITS]
    questions = [r for r in sources if r["kind"] in ("mcq", "qa")]
    docs = [r for r in sources if r["kind"] == "doc"]
    rows: list[dict] = []

    def add(task, rec, messages, reason, tpl=None, req=None, k=0, **extra):
        if isinstance(tpl, tasks.TemplateSet):  # the template the request was rendered with
            tpl = tpl.pick(rec.get("lang"))
        row = {"id": f"{task}/{rec['id']}" + (f"#{k}" if k else ""), "task": task, "split": rec["split"],
               "source_ids": rec.get("source_ids") or [rec["id"]], "urls": [rec.get("url")],
               "messages": messages, "tools": [SEARCH_TOOL] if task == "search" else [],
               "provenance": _provenance(params, teacher.model, tpl, req) if req else None,
               "valid": reason is None, "reject_reason": reason, **extra}
        rows.append(row)

    for rec in questions:
        add("plain", rec, chat.record_to_messages(rec, system, params.chat.think_from_explanation), None)
    if cfg.max_sources:  # the teacher sees at most this many sources per split and kind, spread over sites
        def spread(recs):
            return [r for s in SPLITS for r in sorted(
                (x for x in recs if x["split"] == s), key=lambda x: hashlib.sha256(x["id"].encode()).digest())[:cfg.max_sources]]
        questions, docs = spread(questions), spread(docs)
    by_id = {r["id"]: r for r in sources}

    def answers(task, reqs, out, tpl):
        """(source record, request, sample index, text) for every output; a request the backend
        could not serve becomes a rejected row carrying the backend's error."""
        for req in reqs:
            rec, res = by_id[req.tags["source"]], out[req.key(teacher.model)]
            if isinstance(res, str):
                add(task, rec, [], res, tpl, req)
                continue
            for k, text in enumerate(res):
                yield rec, req, k, text

    # phase 1: think and qgen (qgen's questions feed the search task)
    think_tpl, qgen_tpl, search_tpl = (tasks.TemplateSet.load(getattr(cfg, t), f"synth.{t}")
                                       for t in ("think", "qgen", "search"))
    tcfg = params.teacher
    think_reqs = ([tasks.think_request(r, think_tpl.pick(r.get("lang")), cfg.think.sampling, cfg.seed, tcfg) for r in questions]
                  if cfg.think.enabled else [])
    qgen_reqs = ([tasks.qgen_request(d, qgen_tpl.pick(d.get("lang")), cfg.qgen.sampling, cfg.seed, cfg.qgen_pairs, teacher=tcfg) for d in docs]
                 if cfg.qgen.enabled else [])
    out = teacher.run(think_reqs + qgen_reqs, "think+qgen")
    generated: list[dict] = []
    for rec, req, k, text in answers("think", think_reqs, out, think_tpl):
        messages, reason = tasks.think_row(rec, text, params.teacher.emits_tags, system,
                                           params.chat.think_from_explanation)
        add("think", rec, messages, reason, think_tpl, req, k)
    for doc, req, _, text in answers("qgen", qgen_reqs, out, qgen_tpl):
        new, reasons = tasks.qgen_records(doc, text, cfg.qgen_pairs)
        for reason in reasons:
            add("qgen", doc, [], reason, qgen_tpl, req, k=len(rows))
        for rec in new:
            generated.append(rec)
            add("qgen", rec, chat.record_to_messages(rec, system), None, qgen_tpl, req)

    # phase 2: search decisions for the crawled questions and the generated ones
    search_reqs = ([tasks.search_request(r, search_tpl.pick(r.get("lang")), cfg.search.sampling, cfg.seed, tcfg) for r in questions + generated]
                   if cfg.search.enabled else [])
    out = teacher.run(search_reqs, "search")
    by_id.update({r["id"]: r for r in generated})
    for rec, req, k, text in answers("search", search_reqs, out, search_tpl):
        messages, facts, reason = tasks.search_row(rec, text, index, params.search.top_k,
                                                   params.search.snippet_chars, system,
                                                   cfg.search_labels.get(rec.get("site")))
        add("search", rec, messages, reason, search_tpl, req, k, search=facts)

    valid = [r for r in rows if r["valid"]]
    search_rows = [r for r in valid if r["task"] == "search"]
    metrics = {
        "teacher": {"name": params.teacher.name, "model": params.teacher.model, "backend": params.teacher.backend},
        "requests": {k: teacher.counts[k] for k in ("requests", "cached", "sent", "errors")},
        "rows": {task: {"valid": sum(r["valid"] for r in rows if r["task"] == task),
                        "rejected": sum(not r["valid"] for r in rows if r["task"] == task)}
                 for task in ("plain", "think", "search", "qgen")},
        "rejects": dict(sorted(collections.Counter(r["reject_reason"].split(":")[0] for r in rows if not r["valid"]).items())),
        "search": {"calls": sum(r["search"]["needs_search"] for r in search_rows),
                   "no_calls": sum(not r["search"]["needs_search"] for r in search_rows),
                   "label_from_data": sum(r["search"]["label_source"] == "data" for r in search_rows),
                   "label_from_site": sum(r["search"]["label_source"] == "site" for r in search_rows),
                   "teacher_agrees": sum(r["search"]["teacher_decision"] == r["search"]["needs_search"]
                                         for r in search_rows if r["search"]["label_source"] != "teacher"),
                   "label_from_teacher": sum(r["search"]["label_source"] == "teacher" for r in search_rows)},
    }
    return rows, metrics


def write_outputs(rows: list[dict], metrics: dict, params: Params, out_dir: Path = SFT_DIR) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    mix = params.synth.mix
    train = [r for r in rows if r["valid"] and r["split"] == "train" and _keep_share(r["id"], mix.get(r["task"], 1.0))]
    val = [r for r in rows if r["valid"] and r["split"] == "val"]
    test = [r for r in rows if r["valid"] and r["split"] == "test"]
    for name, part in (("train", train), ("val", val), ("test", test), ("rejects", [r for r in rows if not r["valid"]])):
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in sorted(part, key=lambda r: r["id"]):
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    metrics["train_rows"] = dict(sorted(collections.Counter(r["task"] for r in train).items()))
    metrics["val_rows"] = dict(sorted(collections.Counter(r["task"] for r in val).items()))
    metrics["test_rows"] = dict(sorted(collections.Counter(r["task"] for r in test).items()))


def main() -> None:
    params = load_or_exit()
    for path in (SPLIT, INDEX):
        if not path.exists():
            sys.exit(f"error: no {path} (run: dvc repro search_index)")
    with SPLIT.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    started = time.perf_counter()
    cache = RequestCache(SYNTH_CACHE)
    index = SearchIndex(INDEX)
    try:
        rows, metrics = synthesize(params, records, index, cache)
    finally:
        index.close()
        cache.close()
    write_outputs(rows, metrics, params)
    SYNTH_METRICS.parent.mkdir(parents=True, exist_ok=True)
    SYNTH_METRICS.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    req = metrics["requests"]
    print(f"synth: {req['requests']} requests ({req['cached']} cached, {req['sent']} sent, {req['errors']} failed) "
          f"in {time.perf_counter() - started:.1f} s; train rows {metrics['train_rows']}, "
          f"val rows {metrics['val_rows']}, rejects {metrics['rejects']}")
