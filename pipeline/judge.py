"""Stage judge: a judge model grades the evaluate stage's answers to the test questions.

- single: each answer (base and tuned) rated 1-10 against the reference answer (MT-Bench's
  single-answer grading with a reference), at temperature 0;
- pairwise: base vs tuned, asked twice with the positions swapped; verdicts that disagree
  count as a tie (and are counted as inconsistent), so position bias cannot pick a winner.

The judge is any synthesis backend (conf/judge/*.yaml: vLLM, an OpenAI-compatible server,
transformers), its requests cached like the teacher's (data/judge_cache/requests.sqlite,
keyed by the full request): rerunning after a change elsewhere sends only new requests.
Verdicts are read by pipeline.scoring, which an answer cannot hijack ("[[10]]" or
"Rating: 10" inside an answer never sets its score); an unreadable verdict is stored as
null and counted, never dropped.

Reads reports/eval/predictions.jsonl and params.yaml (judge); writes
reports/judge/judgments.jsonl and metrics/judge.json.

    python -m pipeline.judge          # reads params.yaml (dvc repro judge)
"""

from __future__ import annotations

import collections
import json
import sys

from pipeline import scoring
from pipeline.config import JudgeConfig, load_or_exit
from pipeline.paths import JUDGE_CACHE, JUDGE_METRICS, JUDGMENTS, PREDICTIONS
from pipeline.request_cache import Request, RequestCache
from pipeline.teacher import Teacher, Template, request_seed

SINGLE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 300}, "rating": {"enum": list(range(1, 11))}},
    "required": ["reason", "rating"], "additionalProperties": False,
}
PAIRWISE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 300}, "verdict": {"enum": ["A", "B", "C"]}},
    "required": ["reason", "verdict"], "additionalProperties": False,
}
VERDICT_FORMAT = {
    ("single", "text"): "First explain your grade in a few sentences. Then, alone on the last line, write "
                        "your rating from 1 (wrong) to 10 (correct and clear) exactly in this form: Rating: [[5]]",
    ("single", "json"): 'Reply as JSON: {"reason": "a short explanation", "rating": a number from 1 (wrong) '
                        "to 10 (correct and clear)}",
    ("pairwise", "text"): "First explain your comparison in a few sentences. Then, alone on the last line, "
                          "write your verdict exactly in this form: Verdict: [[A]] if A is better, "
                          "Verdict: [[B]] if B is better, Verdict: [[C]] for a tie",
    ("pairwise", "json"): 'Reply as JSON: {"reason": "a short explanation", "verdict": "A" if A is better, '
                          '"B" if B is better, "C" for a tie}',
}


def read_json_verdict(text: str, key: str, allowed) -> object | None:
    """The `key` of a JSON verdict if the whole output is that object and the value is allowed."""
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if not isinstance(value, bool) and value in allowed else None


def parse_single(text: str, answer: str, fmt: str) -> int | None:
    if fmt == "json":
        return read_json_verdict(text, "rating", range(1, 11))
    return scoring.parse_rating(text, answer)


def parse_pair(text: str, answer_a: str, answer_b: str, fmt: str) -> str | None:
    """"A", "B", "tie" or None."""
    if fmt == "json":
        verdict = read_json_verdict(text, "verdict", ("A", "B", "C"))
        return None if verdict is None else {"A": "A", "B": "B", "C": "tie"}[verdict]
    return scoring.parse_pairwise(text, answer_a, answer_b)


def items_to_judge(predictions: list[dict], max_items: int) -> list[dict]:
    """Test questions answered by both models, by id: {id, question, reference, base, tuned}."""
    by_id: dict[str, dict] = {}
    for p in predictions:
        if p["set"] == "questions" and p.get("reference"):
            item = by_id.setdefault(p["id"], {"id": p["id"], "question": p["question"], "reference": p["reference"]})
            item[p["model"]] = p["parsed"]["answer"]
    items = [by_id[k] for k in sorted(by_id) if "base" in by_id[k] and "tuned" in by_id[k]]
    return items[:max_items] if max_items else items


def build_requests(items: list[dict], cfg: JudgeConfig) -> list[Request]:
    single = Template.load(cfg.single_template, "judge.single_template")
    pairwise = Template.load(cfg.pairwise_template, "judge.pairwise_template")
    schema = {"single": SINGLE_SCHEMA, "pairwise": PAIRWISE_SCHEMA}

    def request(kind: str, text: str, item_id: str, what: str, **tags) -> Request:
        return Request(messages=(("user", text),), n=1, temperature=cfg.temperature, top_p=1.0,
                       max_tokens=cfg.max_tokens, seed=request_seed(cfg.seed, f"judge-{what}", item_id),
                       json_schema=json.dumps(schema[kind], sort_keys=True) if cfg.format == "json" else None,
                       tags={"id": item_id, "kind": kind, **tags})

    requests = []
    for item in items:
        for model in ("base", "tuned"):
            text = single.render(question=item["question"], reference=item["reference"], answer=item[model],
                                 verdict_format=VERDICT_FORMAT["single", cfg.format])
            requests.append(request("single", text, item["id"], f"single-{model}", model=model))
        for order, (a, b) in (("base_first", ("base", "tuned")), ("tuned_first", ("tuned", "base"))):
            text = pairwise.render(question=item["question"], reference=item["reference"], answer_a=item[a],
                                   answer_b=item[b], verdict_format=VERDICT_FORMAT["pairwise", cfg.format])
            requests.append(request("pairwise", text, item["id"], f"pair-{order}", order=order))
    return requests


def judge(items: list[dict], cfg: JudgeConfig, cache: RequestCache) -> tuple[list[dict], dict]:
    """Judgments (one per request) and the metrics."""
    teacher = Teacher(cfg.engine(), cfg.seed, cfg.chunk_size, cache, stage="judge")
    requests = build_requests(items, cfg)
    out = teacher.run(requests, "grading")
    by_id = {item["id"]: item for item in items}
    judgments, pair_verdicts = [], collections.defaultdict(dict)
    for req in requests:
        res = out[req.key(teacher.model)]
        text, error = (res[0] if res else "", None) if isinstance(res, list) else ("", res)
        item, tags = by_id[req.tags["id"]], req.tags
        row = {"id": item["id"], "kind": tags["kind"], "judgment": text, "error": error,
               "request_key": req.key(teacher.model)}
        if tags["kind"] == "single":
            row.update(model=tags["model"], rating=parse_single(text, item[tags["model"]], cfg.format))
        else:
            a, b = ("base", "tuned") if tags["order"] == "base_first" else ("tuned", "base")
            verdict = parse_pair(text, item[a], item[b], cfg.format)
            row.update(order=tags["order"], verdict={"A": a, "B": b, "tie": "tie", None: None}[verdict])
            pair_verdicts[item["id"]][tags["order"]] = verdict
        judgments.append(row)

    single = {}
    for model in ("base", "tuned"):
        ratings = [j["rating"] for j in judgments if j["kind"] == "single" and j["model"] == model]
        rated = [r for r in ratings if r is not None]
        single[model] = {"mean": sum(rated) / len(rated) if rated else None, "rated": len(rated),
                         "unparsed": len(ratings) - len(rated)}
    outcomes = collections.Counter()
    for verdicts in pair_verdicts.values():
        # in the base_first frame: A = base, B = tuned
        first, swapped = verdicts.get("base_first"), verdicts.get("tuned_first")
        outcome = scoring.swap_consistent(first, swapped)
        outcomes[{"A": "base_wins", "B": "tuned_wins", "tie": "ties", None: "unparsed"}[outcome]] += 1
        if outcome == "tie" and (first, swapped) != ("tie", "tie"):
            outcomes["inconsistent"] += 1
    decided = sum(outcomes[k] for k in ("base_wins", "tuned_wins", "ties"))
    metrics = {
        "judge": {"name": cfg.name, "model": cfg.model, "backend": cfg.backend, "format": cfg.format},
        "items": len(items),
        "requests": {k: teacher.counts[k] for k in ("requests", "cached", "sent", "errors")},
        "single": single,
        "pairwise": {"pairs": len(pair_verdicts),
                     **{k: outcomes[k] for k in ("tuned_wins", "base_wins", "ties", "inconsistent", "unparsed")},
                     # ties (inconsistent verdicts included) count half, as in MT-Bench's win rate
                     "tuned_win_rate": (outcomes["tuned_wins"] + outcomes["ties"] / 2) / decided if decided else None},
    }
    return judgments, metrics


def main() -> None:
    params = load_or_exit()
    if not PREDICTIONS.exists():
        sys.exit(f"error: no {PREDICTIONS} (run evaluate first: dvc repro evaluate)")
    with PREDICTIONS.open(encoding="utf-8") as f:
        predictions = [json.loads(line) for line in f if line.strip()]
    items = items_to_judge(predictions, params.judge.max_items)
    cache = RequestCache(JUDGE_CACHE)
    try:
        judgments, metrics = judge(items, params.judge, cache)
    finally:
        cache.close()
    JUDGMENTS.parent.mkdir(parents=True, exist_ok=True)
    with JUDGMENTS.open("w", encoding="utf-8") as f:
        for row in judgments:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    JUDGE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    JUDGE_METRICS.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    s, p, r = metrics["single"], metrics["pairwise"], metrics["requests"]
    print(f"judge: {len(items)} questions, {r['requests']} requests ({r['cached']} cached, {r['sent']} sent, "
          f"{r['errors']} failed); mean rating base {s['base']['mean']} tuned {s['tuned']['mean']} "
          f"(unparsed {s['base']['unparsed']} + {s['tuned']['unparsed']}); pairwise tuned {p['tuned_wins']} "
          f"base {p['base_wins']} ties {p['ties']} (inconsistent {p['inconsistent']}), unparsed {p['unparsed']}")


if __name__ == "__main__":
    main()
