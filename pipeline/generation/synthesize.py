"""Synthesis: the teacher's think, search and qgen rows for each split, verified against the gold
answers, through the request cache; imported conversations mixed in. The stage is
pipeline/stages/synth.py."""

from __future__ import annotations

import collections
import hashlib
import json
import sys
from pathlib import Path

from pipeline.config import Device, Sections
from pipeline.config.chat import ChatConfig
from pipeline.config.crawl import SiteConfig, search_labels
from pipeline.config.datasets import DatasetConfig
from pipeline.config.search import SearchConfig
from pipeline.config.synth import SynthConfig
from pipeline.config.teacher import TeacherConfig
from pipeline.data import chat_format
from pipeline.data.jsonl import read_jsonl
from pipeline.data.text import norm
from pipeline.evaluation import stats
from pipeline.generation import facts as fact_rows
from pipeline.generation import tasks
from pipeline.generation.request_cache import Request, RequestCache
from pipeline.generation.teacher import Teacher, Template, prefills_think
from pipeline.paths import INDEX, SFT_DIR, SPLIT, SYNTH_CACHE
from pipeline.runtime.device import resolve as resolve_device
from pipeline.tools.search import SEARCH_TOOL, SearchIndex, format_results

# Every split gets rows: train and val for training, test for evaluation (its search rows
# carry the labels the tool-call metrics are scored against). Sources never cross splits.
SPLITS = ("train", "val", "test")

# The params.yaml sections synthesis reads (the stage, and the batch export and import beside it)
SECTIONS = dict(seed=int, device=Device, chat=ChatConfig, sites=dict[str, SiteConfig], datasets=dict[str, DatasetConfig],
                search=SearchConfig, teacher=TeacherConfig, synth=SynthConfig)


def _provenance(params: Sections, model: str, tpl: Template, req: Request) -> dict:
    t = params.teacher
    return {"teacher": t.name, "model": model, "backend": t.backend, "template": tpl.path,
            "template_sha256": tpl.sha256, "sampling": req.sampling(), "seed": req.seed,
            "request_key": req.key(model)}


def _keep_share(row_id: str, share: float) -> bool:
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") / 2**64 < share


class Verification:
    """Per task and language: sources, candidates, verified candidates, sources with one verified
    (pass@n), sources that gave a row (yield), and the candidates' reject reasons."""

    def __init__(self) -> None:
        self.by = collections.defaultdict(lambda: {"sources": 0, "candidates": 0, "verified": 0, "any": 0,
                                                   "kept": 0, "rejects": collections.Counter()})
        self.unverifiable = collections.Counter()

    def add(self, task: str, lang: str, verdicts: list[dict] | None, kept: bool, error: str | None = None) -> None:
        s = self.by[(task, lang or "")]
        s["sources"] += 1
        s["kept"] += kept
        if verdicts is None:  # the backend could not serve the request
            s["rejects"][error.split(":")[0]] += 1
            return
        s["candidates"] += len(verdicts)
        s["verified"] += sum(v["verified"] for v in verdicts)
        s["any"] += any(v["verified"] for v in verdicts)
        s["rejects"].update(v["reason"].split(":")[0] for v in verdicts if v["reason"])

    def metrics(self) -> dict:
        out: dict = {}
        for (task, lang), s in sorted(self.by.items()):
            out.setdefault(task, {})[lang] = {
                "sources": s["sources"], "candidates": s["candidates"],
                "pass@1": stats.rate(s["verified"], s["candidates"]),
                "pass@n": stats.rate(s["any"], s["sources"]),
                "yield": stats.rate(s["kept"], s["sources"]),
                "rejects": dict(sorted(s["rejects"].items()))}
        out["unverifiable"] = dict(sorted(self.unverifiable.items()))
        return out


def _check_hint(task_cfg, key: str, templates: tasks.TemplateSet) -> None:
    if task_cfg.hint == "none":
        for tpl in [templates.default, *templates.by_lang.values()]:
            if "$gold" in tpl.text or "${gold}" in tpl.text:
                raise SystemExit(f"error: {key}.hint is none, but {tpl.path} shows the teacher the gold answer "
                                 "($gold): use a template without it (rejection sampling) or set the hint to answer")


def synthesize(params: Sections, records: list[dict], index, cache: RequestCache,
               pending: dict | None = None) -> tuple[list[dict], dict]:
    """All rows (valid and rejected) and the metrics. With `pending` (a dict), nothing is sent:
    the requests missing from the cache are collected there (Teacher.pending), and those that
    depend on their answers are not made yet (the batch export's rounds)."""
    cfg, system = params.synth, params.chat.system_prompt
    tcfg = params.teacher
    # where a local teacher's vLLM runs (main refused a device that is not usable already)
    device = resolve_device(params.device, "synth") if tcfg.backend != "openai" else None
    teacher = Teacher(tcfg, cfg.seed, cfg.chunk_size, cache, device=device)
    teacher.pending = pending
    prefilled = prefills_think(tcfg)
    sources = [r for r in records if r["split"] in SPLITS]
    questions = [r for r in sources if r["kind"] in ("mcq", "qa")]
    docs = [r for r in sources if r["kind"] == "doc"]
    clusters = {r["id"]: r.get("cluster_id") or r["id"] for r in records}
    rows: list[dict] = []
    verification = Verification()

    def add(task, rec, messages, reason, tpl=None, req=None, k=0, extra_provenance=None, provenance=None, **extra):
        if isinstance(tpl, tasks.TemplateSet):  # the template the request was rendered with
            tpl = tpl.pick(rec.get("lang"))
        if provenance is None and req is not None:
            provenance = _provenance(params, teacher.model, tpl, req)
        if provenance is not None and extra_provenance:
            provenance.update(extra_provenance)
        row = {"id": f"{task}/{rec['id']}" + (f"#{k}" if k else ""), "task": task, "split": rec["split"],
               "source_ids": rec.get("source_ids") or [rec["id"]], "urls": [rec.get("url")],
               "messages": messages, "tools": [SEARCH_TOOL] if task == "search" else [],
               "provenance": provenance, "valid": reason is None, "reject_reason": reason, **extra}
        rows.append(row)

    for rec in questions:
        add("plain", rec, chat_format.record_to_messages(rec, system, params.chat.think_from_explanation), None)
    for rec in sources:  # imported conversations: trained on as they are, every assistant turn
        if rec["kind"] == "conversation":
            rows.append({"id": f"conversation/{rec['id']}", "task": "conversation", "split": rec["split"],
                         "source_ids": [rec["id"]], "urls": [rec.get("url")], "messages": rec["messages"],
                         "tools": rec.get("tools") or [], "provenance": None, "valid": True, "reject_reason": None})
    def add_text(form, rec, text, k=0, entity=None, provenance=None):
        """A text row (trained on every token): one form of a fact, or a section as it reads."""
        rows.append({"id": f"text/{form}/{rec['id']}" + (f"#{k}" if k else ""), "task": "text", "split": rec["split"],
                     "source_ids": rec.get("source_ids") or [rec["id"]], "urls": [rec.get("url")], "text": text,
                     "fact": {"form": form, "entity": entity, "answer": chat_format.answer_value(rec) if form != "section" else None},
                     "provenance": provenance, "valid": True, "reject_reason": None})

    def spread(recs, cap, first=lambda r: 0):
        """At most `cap` sources per split (0: all), spread over sites by a hash of their ids."""
        if not cap:
            return recs
        return [r for s in SPLITS for r in sorted(
            (x for x in recs if x["split"] == s),
            key=lambda x: (first(x), hashlib.sha256(x["id"].encode()).digest()))[:cap]]
    fcfg = cfg.facts
    # the facts task states train questions' facts and asks test questions back; val gets none
    fact_src = spread([r for r in questions if r["split"] != "val" and tasks.has_gold(r) and r.get("question")],
                      cfg.max_sources if fcfg.max_sources is None else fcfg.max_sources) if fcfg.enabled else []
    questions = spread(questions, cfg.max_sources)
    # qgen's own cap, where set; sections that state requirements (shall, should, may; 应, 宜, 可) first
    docs = spread(docs, cfg.max_sources if cfg.qgen.max_sources is None else cfg.qgen.max_sources,
                  lambda d: tasks.normative(d) == 0)
    by_id = {r["id"]: r for r in sources}

    def verify(task, rec, req, res, tpl, task_cfg, messages_for):
        """Judge every candidate of one request; rows for the rejected ones up to the first that
        passes, and that one's row (messages_for(content)); returns its content or None."""
        if isinstance(res, str):
            verification.add(task, rec.get("lang"), None, False, res)
            add(task, rec, [], res, tpl, req)
            return None
        labels = tasks.template_labels(tpl.pick(rec.get("lang")).text)
        verdicts = [tasks.judge_candidate(rec, text, emits_tags=tcfg.emits_tags, prefilled=prefilled,
                                          hint=task_cfg.hint, min_f1=cfg.verify.min_f1, labels=labels) for text in res]
        kept = next((k for k, v in enumerate(verdicts) if v["reason"] is None), None)
        verification.add(task, rec.get("lang"), verdicts, kept is not None)
        for k, v in enumerate(verdicts if kept is None else verdicts[:kept]):
            add(task, rec, [], v["reason"], tpl, req, k=k + 1, extra_provenance={"candidate": k})
        if kept is None:
            return None
        content = verdicts[kept]["content"]
        add(task, rec, messages_for(content), None, tpl, req, extra_provenance={"candidate": kept, **(book_of(rec) if task == "think" else {})})
        return content

    # phase 1: think and qgen (qgen's questions feed the search task). The test split's questions
    # are evaluation prompts: the teacher writes nothing for them.
    think_tpl, qgen_tpl, search_tpl, answer_tpl = (tasks.TemplateSet.load(getattr(cfg, t), f"synth.{t}")
                                                   for t in ("think", "qgen", "search", "search_answer"))
    _check_hint(cfg.think, "synth.think", think_tpl)
    _check_hint(cfg.search_answer, "synth.search_answer", answer_tpl)
    think_src = [r for r in questions if r["split"] != "test"] if cfg.think.enabled else []
    for r in think_src:
        if not tasks.has_gold(r):
            verification.unverifiable["think"] += 1
    think_src = [r for r in think_src if tasks.has_gold(r)]
    books = {r["id"]: tasks.open_book(r, index, cfg.open_book.k, clusters) for r in think_src}

    def book_of(rec):
        hits = books.get(rec["id"])
        return {"passages": [h["id"] for h in hits]} if hits else {}

    think_reqs = [tasks.think_request(r, think_tpl.pick(r.get("lang")), cfg.think.sampling, cfg.seed, tcfg,
                                      tasks.passages_text(books[r["id"]], cfg.open_book.snippet_chars))
                  for r in think_src]
    qcfg = cfg.qgen
    qgen_reqs = ([tasks.qgen_request(d, qgen_tpl.pick(tasks.doc_lang(d)), qcfg.sampling, cfg.seed, cfg.qgen_pairs,
                                     teacher=tcfg, max_question_chars=qcfg.max_question_chars,
                                     max_answer_chars=qcfg.max_answer_chars) for d in docs]
                 if qcfg.enabled else [])
    verification.unverifiable["qgen"] += len(qgen_reqs)
    facts_tpl = tasks.TemplateSet.load(fcfg, "synth.facts") if fcfg.enabled else None
    facts_reqs = [fact_rows.request(r, facts_tpl.pick(r.get("lang")), fcfg.sampling, cfg.seed, tcfg) for r in fact_src]
    out = teacher.run(think_reqs + qgen_reqs + facts_reqs, "think+qgen+facts")
    form_counts = collections.defaultdict(collections.Counter)  # form -> verified / reject reasons
    if fcfg.enabled:
        # the forms no teacher writes: each train question and its answer, each train section
        for rec in sources:
            if rec["split"] == "train" and rec["kind"] in ("mcq", "qa") and rec.get("question") and rec.get("answer"):
                add_text("qa", rec, fact_rows.qa_text(rec))
            elif rec["split"] == "train" and rec["kind"] == "doc" and rec.get("text"):
                add_text("section", rec, fact_rows.section_text(rec))
    for req in facts_reqs:
        rec, res = by_id[req.tags["source"]], out[req.key(teacher.model)]
        tpl = facts_tpl.pick(rec.get("lang"))
        if isinstance(res, str):
            verification.add("text", rec.get("lang"), None, False, res)
            add("text", rec, [], res, tpl, req)
            continue
        labels = fact_rows.output_labels(tpl.text)
        verdicts, seen, asked = [], set(), None
        for k, output in enumerate(res):
            fields = fact_rows.parse(output, labels)
            verdict = fact_rows.check(rec, fields)
            for form, why in verdict.items():
                form_counts[form]["verified" if why is None else why] += 1
                verdicts.append({"verified": why is None, "reason": f"{why}: {form}" if why else None})
                if why:
                    add("text", rec, [], f"{why}: {form}", tpl, req, k=len(rows), extra_provenance={"candidate": k},
                        fact={"form": form, "entity": fields["entity"], "text": fields[form]})
            if rec["split"] == "test":
                if asked is None and verdict["asked_back"] is None:
                    asked = fields
                continue
            for form, text in fact_rows.texts(rec, fields, verdict):
                if norm(text) not in seen:
                    seen.add(norm(text))
                    add_text(form, rec, text, k=len(seen), entity=fields["entity"],
                             provenance={**_provenance(params, teacher.model, tpl, req), "candidate": k})
        verification.add("text", rec.get("lang"), verdicts, bool(seen) or asked is not None)
        if asked is not None:
            # the reverse-direction evaluation item: the answer given, the entity asked for
            add("reverse", rec, [{"role": "system", "content": system}, {"role": "user", "content": asked["asked_back"]},
                                 {"role": "assistant", "content": asked["entity"]}], None, tpl, req,
                fact={"entity": asked["entity"], "answer": chat_format.answer_value(rec), "of": rec["id"]})
    thought: dict[str, tuple[str, dict]] = {}  # source id -> its think row's answer turn and provenance
    for req in think_reqs:
        rec = by_id[req.tags["source"]]
        content = verify("think", rec, req, out[req.key(teacher.model)], think_tpl, cfg.think,
                         lambda c, rec=rec: tasks.think_messages(rec, system, c))
        if content is not None:
            thought[rec["id"]] = (content, {**rows[-1]["provenance"], "row": rows[-1]["id"]})
    generated: list[dict] = []
    for req in qgen_reqs:
        doc, res = by_id[req.tags["source"]], out[req.key(teacher.model)]
        tpl = qgen_tpl.pick(tasks.doc_lang(doc))
        if isinstance(res, str):
            add("qgen", doc, [], res, tpl, req)
            continue
        for candidate, text in enumerate(res):
            new, reasons = tasks.qgen_records(doc, text, cfg.qgen_pairs, qcfg.max_question_chars, qcfg.max_answer_chars,
                                              candidate, checks=cfg.verify.pair_checks, examples=tpl.text)
            for reason in reasons:
                add("qgen", doc, [], reason, tpl, req, k=len(rows))
            for rec in new:
                generated.append(rec)
                add("qgen", rec, chat_format.record_to_messages(rec, system), None, tpl, req,
                    extra_provenance={"clause": rec["clause"]})
                if fcfg.enabled and rec["split"] == "train":
                    add_text("qa", rec, fact_rows.qa_text(rec), provenance=rows[-1]["provenance"])

    # phase 2: search. Labelled questions that need no search answer as their verified think row
    # does (tools declared); the others get the teacher's reasoning before the call and the query
    # (the decision too, where no label fixes it), then the call runs on the real index.
    search_src = (questions + generated) if cfg.search.enabled else []
    by_id.update({r["id"]: r for r in generated})
    site_labels = search_labels(params.sites, params.datasets)
    labels = {r["id"]: tasks.search_label(r, site_labels.get(r.get("site"))) for r in search_src}
    search_reqs = [tasks.search_request(r, search_tpl.pick(r.get("lang")), cfg.search.sampling, cfg.seed, tcfg,
                                        label=labels[r["id"]][0], max_reason_chars=cfg.search.max_reason_chars)
                   for r in search_src if labels[r["id"]][0] is not False]
    out = teacher.run(search_reqs, "search")
    decisions: dict[str, tuple[dict, Request]] = {}
    for req in search_reqs:
        rec, res = by_id[req.tags["source"]], out[req.key(teacher.model)]
        decision, reason = tasks.parse_decision(res[0]) if not isinstance(res, str) and res else (None, res or "empty_output")
        if reason:
            add("search", rec, [], reason, search_tpl, req)
        else:
            decisions[rec["id"]] = (decision, req)
    pending = []
    for rec in search_src:
        label, source = labels[rec["id"]]
        decision, req = decisions.get(rec["id"], (None, None))
        if decision is None and label is not False:
            continue  # its decision was rejected above
        needs = label if label is not None else decision["needs_search"]
        facts = {"teacher_decision": decision["needs_search"] if source == "teacher" else None,
                 "label_source": source, "needs_search": needs}
        head = [{"role": "system", "content": system}, {"role": "user", "content": tasks.question_text(rec)}]
        if not needs:
            if rec["split"] == "test" or not cfg.think.enabled:
                answer = tasks.answer_text(rec)
                add("search", rec, head + [{"role": "assistant", "content": answer}],
                    chat_format.validate_assistant(answer, lang=rec.get("lang")), search_tpl if req else None, req, search=facts)
            elif rec["id"] in thought:
                content, provenance = thought[rec["id"]]
                add("search", rec, head + [{"role": "assistant", "content": content}], None,
                    provenance=provenance, search=facts)
            else:
                add("search", rec, [], "no_verified_think", None, None, search=facts)
            continue
        turn, call_facts, reason = tasks.call_turn(rec, decision, index, params.search.top_k, params.search.snippet_chars,
                                                   think=cfg.search.think_before_call)
        facts.update(call_facts)
        if reason and rec["split"] == "test" and reason in ("empty_think", "wrong_language"):
            # an evaluation prompt: its label and query are what is scored, not the reasoning
            turn[0]["content"], reason = "", None
        if reason:
            add("search", rec, [], reason, search_tpl, req, search=facts)
        elif rec["split"] == "test" or not cfg.search_answer.enabled or not tasks.has_gold(rec):
            if rec["split"] != "test":
                verification.unverifiable["search"] += 1
            add("search", rec, head + turn + [{"role": "assistant", "content": tasks.answer_text(rec)}], None,
                search_tpl, req, search=facts)
        else:
            pending.append((rec, head + turn, facts))

    # phase 3: after the tool's response, the reasoning over the results and the answer written from
    # them, verified against the gold like the think task's
    # the teacher reads the same passages as the student's tool response, each cut to
    # synth.open_book.snippet_chars (a small teacher's context holds less than the student's rows)
    answer_reqs = [tasks.search_answer_request(
        rec, format_results(index.search(facts["query"], params.search.top_k), cfg.open_book.snippet_chars),
        answer_tpl.pick(rec.get("lang")), cfg.search_answer.sampling, cfg.seed, tcfg) for rec, _, facts in pending]
    out = teacher.run(answer_reqs, "search answers")
    for (rec, msgs, facts), req in zip(pending, answer_reqs, strict=True):
        def messages_for(content, msgs=msgs):
            return msgs + [{"role": "assistant", "content": content}]
        before = len(rows)
        verify("search", rec, req, out[req.key(teacher.model)], answer_tpl, cfg.search_answer, messages_for)
        for row in rows[before:]:
            row["search"] = facts

    valid = [r for r in rows if r["valid"]]
    if fcfg.enabled:
        metrics_facts = {"forms": {form: dict(sorted(c.items())) for form, c in sorted(form_counts.items())},
                         "text_rows": dict(sorted(collections.Counter(
                             r["fact"]["form"] for r in valid if r["task"] == "text" and r["split"] == "train").items())),
                         "reverse_items": sum(r["task"] == "reverse" for r in valid)}
    search_rows = [r for r in valid if r["task"] == "search"]
    servers = teacher.server_counts()
    metrics = {
        "teacher": {"name": params.teacher.name, "model": params.teacher.model, "backend": params.teacher.backend,
                    "prefills_think": prefilled},
        "requests": {**{k: teacher.counts[k] for k in ("requests", "cached", "sent", "errors")},
                     **({"servers": servers} if len(servers) > 1 else {})},
        "rows": {task: {"valid": sum(r["valid"] for r in rows if r["task"] == task),
                        "rejected": sum(not r["valid"] for r in rows if r["task"] == task)}
                 for task in ("plain", "think", "search", "qgen", "conversation", "text", "reverse")
                 if task not in ("conversation", "reverse") or any(r["task"] == task for r in rows)},
        "rejects": dict(sorted(collections.Counter(r["reject_reason"].split(":")[0] for r in rows if not r["valid"]).items())),
        "verify": verification.metrics(),
        "search": {"calls": sum(r["search"]["needs_search"] for r in search_rows),
                   "no_calls": sum(not r["search"]["needs_search"] for r in search_rows),
                   "label_from_data": sum(r["search"]["label_source"] == "data" for r in search_rows),
                   "label_from_site": sum(r["search"]["label_source"] == "site" for r in search_rows),
                   "label_from_teacher": sum(r["search"]["label_source"] == "teacher" for r in search_rows)},
        **({"facts": metrics_facts} if fcfg.enabled else {}),
    }
    return rows, metrics


def write_outputs(rows: list[dict], metrics: dict, params: Sections, out_dir: Path = SFT_DIR) -> None:
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


def too_few_train_rows(metrics: dict, min_rows: int) -> str | None:
    """Why the run stops after synth (its rows and rejects written), or None: fewer verified train
    rows than synth.min_train_rows would fine-tune on a handful of examples."""
    train = sum(metrics["train_rows"].values())
    if train >= min_rows:
        return None
    rejects = ", ".join(f"{reason} {n}" for reason, n in sorted(metrics["rejects"].items(), key=lambda kv: -kv[1])[:5])
    return (f"synth kept {train} train rows ({metrics['train_rows']}), fewer than synth.min_train_rows = {min_rows}; "
            f"most rejected as: {rejects or 'none'} (data/sft/rejects.jsonl, metrics/synth.json). "
            "A stronger teacher (teacher=openai and its URL), more sections and candidates for qgen "
            "(synth.qgen.max_sources, synth.qgen.sampling.n) or sites with question-and-answer pages give more; "
            "or lower synth.min_train_rows knowingly")


def synthesize_inputs(params: Sections, pending: dict | None = None) -> tuple[list[dict], dict]:
    """synthesize() on the stage's inputs (data/dedup/split.jsonl, the search index, the request
    cache), opened and closed here."""
    for path in (SPLIT, INDEX):
        if not path.exists():
            sys.exit(f"error: no {path} (run: dvc repro search_index)")
    records = read_jsonl(SPLIT)
    cache = RequestCache(SYNTH_CACHE)
    index = SearchIndex(INDEX)
    try:
        return synthesize(params, records, index, cache, pending=pending)
    finally:
        index.close()
        cache.close()
