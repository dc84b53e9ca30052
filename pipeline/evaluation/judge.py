"""The judge: a model grades evaluate's answers against the reference (single ratings, pairwise
verdicts), checked on control answers first; a judge that fails its controls is reported as
uninformative. The stage is pipeline/stages/judge.py."""

from __future__ import annotations

import collections
import json

from pipeline.config.judge import JudgeConfig
from pipeline.data import chat_format
from pipeline.evaluation import scoring, stats
from pipeline.generation.request_cache import Request, RequestCache
from pipeline.generation.teacher import Teacher, Template, request_seed

SINGLE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 300}, "correct": {"enum": ["yes", "no"]},
                   "rating": {"enum": list(range(1, 11))}},
    "required": ["reason", "correct", "rating"], "additionalProperties": False,
}
PAIRWISE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 300}, "verdict": {"enum": ["A", "B", "C"]}},
    "required": ["reason", "verdict"], "additionalProperties": False,
}
VERDICT_FORMAT = {
    ("single", "text"): "First explain your grade in a few sentences. Then write two lines, exactly in this form: "
                        "first `Correct: [[yes]]` if the answer agrees with the reference answer, or `Correct: [[no]]` "
                        "if it does not; then, alone on the last line, your rating from 1 (wrong) to 10 (correct and "
                        "clear) as `Rating: [[n]]` with your number in place of n",
    ("single", "json"): 'Reply as JSON: {"reason": "a short explanation", "correct": "yes" if the answer agrees with '
                        'the reference answer, "no" if it does not, "rating": your number from 1 (wrong) to 10 '
                        "(correct and clear)}",
    ("pairwise", "text"): "First explain your comparison in a few sentences. Then, alone on the last line, "
                          "write your verdict exactly in this form: Verdict: [[A]] if A is better, "
                          "Verdict: [[B]] if B is better, Verdict: [[C]] for a tie",
    ("pairwise", "json"): 'Reply as JSON: {"reason": "a short explanation", "verdict": "A" if A is better, '
                          '"B" if B is better, "C" for a tie}',
}
# The control items: the answer graded, and the verdict a judge worth reading gives it.
CONTROLS = {"reference": True, "wrong": False, "empty": False}


def read_json_verdict(text: str, key: str, allowed) -> object | None:
    """The `key` of a JSON verdict if the whole output is that object and the value is allowed."""
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if not isinstance(value, bool) and value in allowed else None


def parse_single(text: str, answer: str, fmt: str) -> tuple[bool | None, int | None]:
    """(correct, rating); each None when unreadable."""
    if fmt == "json":
        correct = read_json_verdict(text, "correct", ("yes", "no"))
        return (None if correct is None else correct == "yes"), read_json_verdict(text, "rating", range(1, 11))
    return scoring.parse_correct(text, answer), scoring.parse_rating(text, answer)


def parse_pair(text: str, answer_a: str, answer_b: str, fmt: str) -> str | None:
    """"A", "B", "tie" or None."""
    if fmt == "json":
        verdict = read_json_verdict(text, "verdict", ("A", "B", "C"))
        return None if verdict is None else {"A": "A", "B": "B", "C": "tie"}[verdict]
    return scoring.parse_pairwise(text, answer_a, answer_b)


def shown_reference(reference: str) -> str:
    """The reference as the judge reads it: the answer, then its explanation (no think tags)."""
    parsed = chat_format.parse_output(reference)
    return parsed["answer"] + (f"\n{parsed['think']}" if parsed["think"] else "")


def items_to_judge(predictions: list[dict], max_items: int) -> list[dict]:
    """Test questions answered by both models, by id: {id, question, reference, reference_answer,
    base, tuned, wrong}; `wrong` is the next item's reference answer (cyclically, the first that
    differs), the control a judge must grade as wrong."""
    by_id: dict[str, dict] = {}
    for p in predictions:
        if p["set"] == "questions" and p.get("reference"):
            item = by_id.setdefault(p["id"], {"id": p["id"], "question": p["question"],
                                              "reference": shown_reference(p["reference"]),
                                              "reference_answer": p.get("reference_answer") or p["reference"]})
            item[p["model"]] = p["parsed"]["answer"]
    items = [by_id[k] for k in sorted(by_id) if "base" in by_id[k] and "tuned" in by_id[k]]
    # over all answered questions, before max_items cuts: an item's controls do not depend on how many are judged
    for i, item in enumerate(items):
        others = [items[(i + j) % len(items)]["reference_answer"] for j in range(1, len(items))]
        item["wrong"] = next((o for o in others if scoring.normalise_answer(o) != scoring.normalise_answer(
            item["reference_answer"])), None)
    return items[:max_items] if max_items else items


def control_answers(item: dict) -> dict[str, str]:
    answers = {"reference": item["reference_answer"], "empty": ""}
    if item["wrong"] is not None:
        answers["wrong"] = item["wrong"]
    return answers


def build_requests(items: list[dict], cfg: JudgeConfig) -> list[Request]:
    single = Template.load(cfg.single_template, "judge.single_template")
    pairwise = Template.load(cfg.pairwise_template, "judge.pairwise_template")
    schema = {"single": SINGLE_SCHEMA, "pairwise": PAIRWISE_SCHEMA}

    def request(kind: str, text: str, item_id: str, what: str, **tags) -> Request:
        return Request(messages=(("user", text),), n=1, temperature=cfg.temperature, top_p=1.0,
                       max_tokens=cfg.max_tokens, seed=request_seed(cfg.seed, f"judge-{what}", item_id),
                       json_schema=json.dumps(schema[kind], sort_keys=True) if cfg.format == "json" else None,
                       tags={"id": item_id, "kind": kind, **tags})

    def grade(item: dict, answer: str) -> str:
        return single.render(question=item["question"], reference=item["reference"], answer=answer,
                             verdict_format=VERDICT_FORMAT["single", cfg.format])

    def compare(item: dict, a: str, b: str) -> str:
        return pairwise.render(question=item["question"], reference=item["reference"], answer_a=a, answer_b=b,
                               verdict_format=VERDICT_FORMAT["pairwise", cfg.format])

    requests = []
    for item in items:
        for model in ("base", "tuned"):
            requests.append(request("single", grade(item, item[model]), item["id"], f"single-{model}", model=model))
        for order, (a, b) in (("base_first", ("base", "tuned")), ("tuned_first", ("tuned", "base"))):
            requests.append(request("pairwise", compare(item, item[a], item[b]), item["id"], f"pair-{order}", order=order))
        for control, answer in control_answers(item).items():
            requests.append(request("single", grade(item, answer), item["id"], f"control-{control}", control=control))
        if item["wrong"] is not None:
            for order in ("reference_first", "wrong_first"):
                a, b = ((item["reference_answer"], item["wrong"]) if order == "reference_first"
                        else (item["wrong"], item["reference_answer"]))
                requests.append(request("pairwise", compare(item, a, b), item["id"], f"control-pair-{order}",
                                        control="pair", order=order))
    return requests


def control_metrics(judgments: list[dict], min_control: float) -> dict:
    """How the judge did on the controls, and whether it is informative."""
    single = [j for j in judgments if j.get("control") in CONTROLS]
    hits = [j["correct"] is CONTROLS[j["control"]] for j in single]
    by_kind = {kind: stats.rate(sum(j["correct"] is want for j in single if j["control"] == kind),
                                sum(j["control"] == kind for j in single)) for kind, want in CONTROLS.items()}
    pairs = collections.defaultdict(dict)
    for j in judgments:
        if j.get("control") == "pair":
            pairs[j["id"]][j["order"]] = j["verdict"]
    consistent = prefers = 0
    for verdicts in pairs.values():
        first, second = verdicts.get("reference_first"), verdicts.get("wrong_first")
        consistent += first is not None and first == second
        prefers += first == second == "reference"
    accuracy = stats.rate(sum(hits), len(hits))
    consistency = stats.rate(consistent, len(pairs))
    informative = bool(hits) and bool(pairs) and accuracy["rate"] >= min_control and consistency["rate"] >= min_control
    ratings = {kind: [j["rating"] for j in single if j["control"] == kind and j["rating"] is not None] for kind in CONTROLS}
    return {
        "accuracy": accuracy["rate"], "k": accuracy["k"], "n": accuracy["n"], "ci95": accuracy["ci95"],
        "by_kind": by_kind,
        "mean_rating": {kind: sum(r) / len(r) if r else None for kind, r in ratings.items()},
        "position_consistency": consistency["rate"], "pairs": consistency["n"],
        "position_consistency_ci95": consistency["ci95"],
        "prefers_reference": stats.rate(prefers, len(pairs)),
        "min_control": min_control,
        "informative": informative,
    }


def judge(items: list[dict], cfg: JudgeConfig, cache: RequestCache,
          device: str | None = None) -> tuple[list[dict], dict]:
    """Judgments (one per request) and the metrics."""
    teacher = Teacher(cfg.engine(), cfg.seed, cfg.chunk_size, cache, stage="judge", device=device)
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
        if tags.get("control") in CONTROLS:
            answer = control_answers(item)[tags["control"]]
            correct, rating = parse_single(text, answer, cfg.format)
            row.update(control=tags["control"], answer=answer, correct=correct, rating=rating)
        elif tags.get("control") == "pair":
            first_is_reference = tags["order"] == "reference_first"
            a, b = ((item["reference_answer"], item["wrong"]) if first_is_reference
                    else (item["wrong"], item["reference_answer"]))
            verdict = parse_pair(text, a, b, cfg.format)
            names = {"A": "reference" if first_is_reference else "wrong", "B": "wrong" if first_is_reference else "reference",
                     "tie": "tie", None: None}
            row.update(control="pair", order=tags["order"], verdict=names[verdict])
        elif tags["kind"] == "single":
            correct, rating = parse_single(text, item[tags["model"]], cfg.format)
            row.update(model=tags["model"], correct=correct, rating=rating)
        else:
            a, b = ("base", "tuned") if tags["order"] == "base_first" else ("tuned", "base")
            verdict = parse_pair(text, item[a], item[b], cfg.format)
            row.update(order=tags["order"], verdict={"A": a, "B": b, "tie": "tie", None: None}[verdict])
            pair_verdicts[item["id"]][tags["order"]] = verdict
        judgments.append(row)

    graded = [j for j in judgments if j["kind"] == "single" and "model" in j]
    single = {}
    for model in ("base", "tuned"):
        mine = [j for j in graded if j["model"] == model]
        rated = [j["rating"] for j in mine if j["rating"] is not None]
        verdicts = [j["correct"] for j in mine if j["correct"] is not None]
        single[model] = {"mean": sum(rated) / len(rated) if rated else None, "rated": len(rated),
                         "unparsed": len(mine) - len(rated),
                         "correct": stats.rate(sum(verdicts), len(verdicts)),
                         "correct_unparsed": len(mine) - len(verdicts)}
    both = {}
    for j in graded:
        both.setdefault(j["id"], {})[j["model"]] = j["correct"]
    paired = [v for v in both.values() if v.get("base") is not None and v.get("tuned") is not None]
    outcomes = collections.Counter()
    for verdicts in pair_verdicts.values():
        # in the base_first frame: A = base, B = tuned
        first, swapped = verdicts.get("base_first"), verdicts.get("tuned_first")
        outcome = scoring.swap_consistent(first, swapped)
        outcomes[{"A": "base_wins", "B": "tuned_wins", "tie": "ties", None: "unparsed"}[outcome]] += 1
        if outcome == "tie" and (first, swapped) != ("tie", "tie"):
            outcomes["inconsistent"] += 1
    decided = sum(outcomes[k] for k in ("base_wins", "tuned_wins", "ties"))
    controls = control_metrics(judgments, cfg.min_control)
    metrics = {
        "judge": {"name": cfg.name, "model": cfg.model, "backend": cfg.backend, "format": cfg.format},
        "informative": controls["informative"],
        "items": len(items),
        "requests": {k: teacher.counts[k] for k in ("requests", "cached", "sent", "errors")},
        "controls": controls,
        "single": single,
        "comparison": {"correct": stats.paired([v["base"] for v in paired], [v["tuned"] for v in paired])},
        "pairwise": {"pairs": len(pair_verdicts),
                     **{k: outcomes[k] for k in ("tuned_wins", "base_wins", "ties", "inconsistent", "unparsed")},
                     # ties (inconsistent verdicts included) count half, as in MT-Bench's win rate
                     "tuned_win_rate": (outcomes["tuned_wins"] + outcomes["ties"] / 2) / decided if decided else None},
    }
    return judgments, metrics
