"""The report's content as blocks (headline comparisons with counts and intervals, metric tables,
the judge's, chapters, confusion matrices, curves, worst examples), rendered by markdown.py and
page.py. The stage is pipeline/stages/report.py."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import NamedTuple

from pipeline.data.jsonl import read_jsonl as _read_jsonl
from pipeline.evaluation.stats import pct, rate_cell, unpaired, wilson
from pipeline.paths import JUDGE_METRICS

MAX_CURVE_ROWS = 20  # per curve in the Markdown table; the SVG draws every point

# Figures that are not rates: (row label, path inside a model's entry of eval.json, decimals)
VALUE_ROWS = [
    ("held-out loss", ("loss",), 4),
    ("perplexity", ("perplexity",), 1),
    ("mean think chars", ("think", "mean_chars"), 1),
    ("query similarity (mean, calls compared)", ("tools", "query_similarity"), 3),
]
# Rates: (row label, path of the rate, of its item count (None: not recorded), of its interval, of
# its success count (None: the rate times the count), key of the paired comparison in eval.json
# (None: unpaired))
RATE_ROWS = [
    ("stop rate (every prompt)", ("stop", "rate"), ("stop", "n"), ("stop", "ci95"), ("stop", "k"), None),
    # evaluate's think figure is the test questions' (the set its paired comparison is keyed by)
    ("think rate (test questions)", ("think", "rate"), ("think", "n"), ("think", "ci95"), None, "think.questions"),
    ("tool-call validity (of the calls made)", ("tools", "validity"), ("tools", "call_attempts"),
     ("tools", "validity_ci95"), ("tools", "valid_attempts"), None),
    ("search-decision accuracy", ("tools", "decision_accuracy"), ("tools", "n"), ("tools", "decision_accuracy_ci95"),
     None, "tools.decision_accuracy"),
    # an eval.json written before evaluate counted the calls it compared: the rate is shown, flagged
    ("argument match (first call vs the reference)", ("tools", "argument_match"), ("tools", "argument_compared"),
     ("tools", "argument_match_ci95"), ("tools", "argument_matched"), None),
    ("exam accuracy (generation)", ("exam", "accuracy"), ("exam", "questions"), ("exam", "ci95"), None,
     "exam_generation"),
]
PAIRWISE_ROWS = [("pairs", "pairs", 0), ("tuned wins", "tuned_wins", 0), ("base wins", "base_wins", 0),
                 ("ties", "ties", 0), ("inconsistent (order flipped the verdict)", "inconsistent", 0),
                 ("unparsed", "unparsed", 0), ("tuned win rate", "tuned_win_rate", 3)]


class Table(NamedTuple):
    title: str
    header: list[str]
    rows: list[list[str]]
    html_id: str = ""


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return _read_jsonl(path)


def read_curve(path: Path) -> list[tuple[float, float]]:
    """(step, loss) points of a dvclive TSV; missing file, empty file or bad rows give no points."""
    if not path.exists():
        return []
    points = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                points.append((float(row["step"]), float(row["loss"])))
            except (KeyError, TypeError, ValueError):
                continue
    return sorted(points)


def dig(data, *keys):
    """data[k1][k2]...; None where any level is missing or not a dict."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def fmt(value, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{decimals}f}"
    return str(value)


def fmt_delta(base, tuned, decimals: int = 3) -> str:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (base, tuned)):
        return "n/a"
    return f"{tuned - base:+,.{decimals}f}"


def exam_sets(eval_metrics: dict) -> list[str]:
    """Names of the external exam sets either model was scored on."""
    return sorted({name for model in ("base", "tuned") for name in dig(eval_metrics, model, "exam_sets") or {}})


def delta_cells(comparison: dict | None) -> list[str]:
    """[difference with its interval, p-value, verdict in words] of a paired comparison."""
    if not comparison:
        return ["n/a", "n/a", "nothing to compare"]
    low, high = comparison["ci95"]
    delta = f"{100 * comparison['delta']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
    if not comparison["significant"]:
        verdict = "not significant"
    else:
        verdict = "tuned better" if comparison["delta"] > 0 else "tuned worse"
    return [delta, f"{comparison['p_value']:.3g}", verdict]


def _mc_setting(name: str) -> tuple[str, int]:
    return name, int(name.removesuffix("shot"))


def mc_rows(eval_metrics: dict) -> list[tuple[str, dict | None, dict | None, str]]:
    """(label, base entry, tuned entry, comparison key) for each log-likelihood setting and
    continuation, in set, framing, shots order; entries are {value, n, ci}."""
    rows = []
    base_mc, tuned_mc = dig(eval_metrics, "base", "mc") or {}, dig(eval_metrics, "tuned", "mc") or {}
    for set_name in sorted(set(base_mc) | set(tuned_mc)):
        framings = sorted(set(base_mc.get(set_name) or {}) | set(tuned_mc.get(set_name) or {}))
        for framing in framings:
            settings = set(dig(base_mc, set_name, framing) or {}) | set(dig(tuned_mc, set_name, framing) or {})
            # cloze lists no letters: its acc is the option texts' summed log-likelihood
            letters = "texts, summed" if framing == "cloze" else "letters"
            for shots in sorted(settings, key=lambda x: _mc_setting(x)[1]):
                for figure, ci_key, words in (("acc", "ci95", letters), ("acc_norm", "acc_norm_ci95", "texts")):
                    entries = []
                    for model_mc in (base_mc, tuned_mc):
                        entry = dig(model_mc, set_name, framing, shots)
                        entries.append(None if entry is None else
                                       {"value": entry.get(figure), "n": entry.get("n"), "ci": entry.get(ci_key),
                                        "chance": entry.get("chance")})
                    rows.append((f"{set_name}, {framing}, {shots}, {words} ({figure})", *entries,
                                 f"mc.{set_name}.{framing}.{shots}.{figure}"))
    return rows


def _entry(value, n, ci, k=None, chance=None) -> dict:
    return {"value": value, "n": n, "ci": ci, "k": k, "chance": chance}


def _majority_share(confusion: dict | None) -> float | None:
    """What the same decision on every prompt scores (never search, or always): the share of the
    commoner label in a label x decision table ({"call/no_call": 2, ...})."""
    counts = (confusion or {}).items()
    labels = [sum(v for k, v in counts if k.startswith(f"{label}/")) for label in ("call", "no_call")]
    return max(labels) / sum(labels) if sum(labels) else None


def at_chance(base: dict | None, tuned: dict | None) -> bool:
    """Both models' intervals hold the rate a blind guess scores: the figure cannot tell a right
    answer from a wrong one, so its difference is flagged, not read (a figure without a known
    chance rate is never flagged)."""
    def holds(e):
        chance, ci = (e or {}).get("chance"), (e or {}).get("ci")
        return chance is not None and bool(ci) and ci[0] <= chance <= ci[1]
    return holds(base) and holds(tuned)


KNOWLEDGE_PARTS = [("", "all test facts"), ("forward", "asked as crawled"), ("reverse", "asked back (reverse)"),
                   ("stated", "stated in training text"), ("not_stated", "not stated in training (control)"),
                   ("unknown", "entity unknown")]


def knowledge_rows(eval_metrics: dict) -> list[tuple[str, dict | None, dict | None, str]]:
    """(label, base entry, tuned entry, comparison key) of the knowledge figures (cloze accuracy,
    ranked first, mean reciprocal rank), for all test facts, by direction and by group."""
    rows = []
    for figure, words in (("cloze", "cloze accuracy (question alone, answers scored as text)"),
                          ("rank_acc1", "ranked first (gold against 20 answers of its site and kind)"),
                          ("mrr", "mean reciprocal rank (difference: hundredths)")):
        for part, part_words in KNOWLEDGE_PARTS:
            entries = []
            for model in ("base", "tuned"):
                k = dig(eval_metrics, model, "knowledge")
                if part:
                    k = dig(k, "by_direction", part) or dig(k, "by_group", part)
                e = dig(k, figure)
                if not e or not e.get("n"):
                    entries.append(None)
                elif figure == "mrr":
                    entries.append({**_entry(e["mean"], e["n"], e["ci95"]), "mean": True})
                else:
                    entries.append(_entry(e["rate"], e["n"], e["ci95"], e["k"], e.get("chance")))
            if any(entries):
                rows.append((f"{words}: {part_words}", *entries, f"knowledge.{figure}" + (f".{part}" if part else "")))
    return rows


def _cell(e: dict | None) -> str:
    if not e:
        return "n/a"
    if e.get("mean"):
        ci = f" [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if e["ci"] else ""
        return f"{e['value']:.3f} (n={e['n']}){ci}"
    return rate_cell(e["value"], e["n"], e["ci"], e.get("k"))


def behaviour_rows(eval_metrics: dict) -> list[tuple[str, dict | None, dict | None, str]]:
    """(label, base entry, tuned entry, comparison key) of the generation figures."""
    def per_model(fn):
        out = []
        for model in ("base", "tuned"):
            m = eval_metrics.get(model)
            try:
                out.append(fn(m) if isinstance(m, dict) else None)
            except (KeyError, TypeError):
                out.append(None)
        return out

    def from_rate(d):
        return _entry(d["rate"], d["n"], d["ci95"], d["k"])

    sets = sorted(set(dig(eval_metrics, "base", "think", "by_set") or {}) |
                  set(dig(eval_metrics, "tuned", "think", "by_set") or {}))
    rows = []
    for s in sets:
        rows.append((f"think rate: {s}", *per_model(lambda m: from_rate(m["think"]["by_set"][s])), f"think.{s}"))
    rows.append(("think rate: turns after a tool response (unpaired)",
                 *per_model(lambda m: from_rate(m["think_after_tool"])), "think_after_tool"))
    for s in sets:
        rows.append((f"ends its turn: {s}", *per_model(lambda m: from_rate(m["stop_by_set"][s])), f"stop.{s}"))
    rows.append(("search decision accuracy (call / no call vs label)",
                 *per_model(lambda m: _entry(m["tools"]["decision_accuracy"], m["tools"]["n"],
                                             m["tools"]["decision_accuracy_ci95"],
                                             chance=_majority_share(m["tools"].get("confusion")))),
                 "tools.decision_accuracy"))
    rows.append(("tool-call validity (of the calls made; unpaired)",
                 *per_model(lambda m: _entry(m["tools"]["validity"], m["tools"]["call_attempts"],
                                             m["tools"]["validity_ci95"], m["tools"]["valid_attempts"])),
                 "tools.validity"))
    rows.append(("search prompts: final answer contains the reference",
                 *per_model(lambda m: _entry(m["search_answer"]["accuracy"], m["search_answer"]["n"],
                                             m["search_answer"]["ci95"], m["search_answer"]["k"])), "search_answer"))
    for s in sets:
        for figure in ("contains", "exact"):
            rows.append((f"free-form answer {'contains the reference' if figure == 'contains' else 'exact match'}: {s}",
                         *per_model(lambda m, f=figure: _entry(m["free_form"][s][f], m["free_form"][s]["n"],
                                                              m["free_form"][s][f"{f}_ci95"])),
                         f"free_form.{s}.{figure}"))
    rows.append(("exam accuracy by generation (the option the answer names)",
                 *per_model(lambda m: _entry(m["exam"]["accuracy"], m["exam"]["questions"], m["exam"].get("ci95"))),
                 "exam_generation"))
    for name in exam_sets(eval_metrics):
        rows.append((f"exam accuracy by generation: {name}",
                     *per_model(lambda m, x=name: _entry(m["exam_sets"][x]["accuracy"], m["exam_sets"][x]["questions"],
                                                         m["exam_sets"][x].get("ci95"))),
                     f"exam_generation.{name}"))
    return rows


def comparison_table(title: str, rows, comparisons: dict) -> Table:
    header = ["figure", "base", "tuned", "tuned - base, points [95% CI]", "p", "difference"]
    body = []
    for label, base, tuned, key in rows:
        cells = [_cell(e) for e in (base, tuned)]
        delta = delta_cells(comparisons.get(key))
        if comparisons.get(key) and at_chance(base, tuned):
            delta[-1] = "both at chance"
        body.append([label, *cells, *delta])
    return Table(title, header, body)


def significance_sentences(rows, comparisons: dict) -> list[str]:
    better, worse, same, blind = [], [], [], []
    for label, base, tuned, key in rows:
        c = comparisons.get(key)
        if not c:
            continue
        text = f"{label} ({100 * c['delta']:+.1f} points, p = {c['p_value']:.2g})"
        if at_chance(base, tuned):
            blind.append(text)
            continue
        (better if c["significant"] and c["delta"] > 0 else worse if c["significant"] else same).append(text)
    out = []
    if better:
        out.append("Significantly better after tuning (p < 0.05): " + "; ".join(better) + ".")
    if worse:
        out.append("Significantly worse after tuning (p < 0.05): " + "; ".join(worse) + ".")
    if same:
        out.append(f"No significant difference on the other {len(same)} figures compared.")
    if blind:
        out.append(f"At chance for both models, so not read as a difference ({len(blind)}: each model's 95% interval "
                   "holds what a blind guess scores; such a figure cannot tell a right answer from a wrong one): "
                   + "; ".join(blind) + ".")
    return out or ["No figure could be compared (no items answered by both models)."]


def headline_blocks(eval_metrics: dict) -> list[tuple[str, object]]:
    """What the reader came for: did tuning help, on what, and how sure is that."""
    comparisons = eval_metrics.get("comparison") or {}
    facts, knowledge, behaviour = knowledge_rows(eval_metrics), mc_rows(eval_metrics), behaviour_rows(eval_metrics)
    blocks: list[tuple[str, object]] = [("h2", "Did tuning help? Knowledge and behaviour, with 95% intervals")]
    blocks += [("p", text) for text in significance_sentences(facts + knowledge + behaviour, comparisons)]
    blocks.append(("p", "Each rate: share (count) [Wilson 95% interval], in percent. Tuned - base: the paired "
                        "difference on the same items (Newcombe's interval; McNemar's exact test; validity, a share "
                        "of the calls each model chose to make, unpaired: Fisher). Each test stands alone (no "
                        "correction for the number of tests)."))
    if facts:
        blocks.append(("table", comparison_table(
            "Knowledge of the test facts, both ways, by log-likelihood (the headline for students under ~1B: "
            "cloze, OLMES; ranked against other answers; the control: facts no training text stated)",
            facts, comparisons)))
        blocks += [("p", text) for text in power_sentences(eval_metrics)]
    if knowledge:
        blocks.append(("table", comparison_table(
            "Knowledge: multiple-choice accuracy by log-likelihood; cloze: the question alone, each option's text "
            "scored as the answer; plain and chat: the options listed (letters: acc; texts, per character: "
            "acc_norm). The general sets are the check that nothing outside the domain was lost",
            knowledge, comparisons)))
    else:
        blocks.append(("p", "No multiple-choice items were scored by log-likelihood."))
    blocks.append(("table", comparison_table("Behaviour and answers (generation)", behaviour, comparisons)))
    return blocks


def power_sentences(eval_metrics: dict) -> list[str]:
    """What the knowledge items can detect: the smallest paired difference at 95% with 80% power."""
    out = []
    for figure, words in (("cloze", "cloze accuracy"), ("rank_acc1", "ranked first")):
        p = dig(eval_metrics, "knowledge", "power", figure)
        if p and p.get("detectable_difference") is not None:
            out.append(f"Power: {p['n']} paired items ({100 * p['discordant']:.1f}% discordant) detect a difference in "
                       f"{words} of {100 * p['detectable_difference']:.1f} points or more (95%, 80% power).")
    return out


def judge_informative(judge: dict | None) -> bool:
    return bool(judge) and judge.get("informative") is True


def _rate_entry(model: dict | None, value_path, n_path, ci_path, k_path) -> dict | None:
    """{value, n, ci, k} of a rate in a model's entry; the interval is Wilson's where the entry
    has counts but no interval; None where the rate is missing."""
    value = dig(model, *value_path)
    if value is None:
        return None
    n = dig(model, *n_path) if n_path else None
    k = dig(model, *k_path) if k_path else None
    if n and k is None:
        k = round(value * n)
    ci = dig(model, *ci_path) if ci_path else None
    return _entry(value, n, ci if ci or not n else wilson(k, n), k)


def _rate_text(e: dict | None) -> str:
    if e and e["value"] is not None and not e["n"]:
        return f"{pct(e['value'])} (count not recorded)"
    return _cell(e)


def _rate_delta(base: dict | None, tuned: dict | None, comparison: dict | None) -> str:
    """Tuned - base in points with its 95% interval: the paired comparison where eval.json has
    one, else Newcombe's interval for two independent shares (marked unpaired)."""
    if comparison:
        return delta_cells(comparison)[0]
    if not (base and tuned and base["n"] and tuned["n"]):
        return "n/a"
    return delta_cells(unpaired(tuned["k"], tuned["n"], base["k"], base["n"]))[0] + " unpaired"


def metric_table(eval_metrics: dict, judge: dict | None) -> Table:
    """Every figure, base vs tuned: rates with their counts and intervals, the difference in points
    with its interval; the other figures (losses, means) as values with their plain difference."""
    base, tuned = eval_metrics.get("base"), eval_metrics.get("tuned")
    comparisons = eval_metrics.get("comparison") or {}
    rows = []
    for label, path, d in VALUE_ROWS:
        b, t = dig(base, *path), dig(tuned, *path)
        rows.append([label, fmt(b, d), fmt(t, d), fmt_delta(b, t, d)])
    specs = RATE_ROWS + [(f"exam accuracy (generation): {name}", ("exam_sets", name, "accuracy"),
                          ("exam_sets", name, "questions"), ("exam_sets", name, "ci95"), None,
                          f"exam_generation.{name}") for name in exam_sets(eval_metrics)]
    for label, value, n, ci, k, key in specs:
        b, t = (_rate_entry(m, value, n, ci, k) for m in (base, tuned))
        rows.append([label, _rate_text(b), _rate_text(t), _rate_delta(b, t, comparisons.get(key) if key else None)])
    if judge_informative(judge):
        b, t = (_rate_entry(judge, ("single", m, "correct", "rate"), ("single", m, "correct", "n"),
                            ("single", m, "correct", "ci95"), ("single", m, "correct", "k")) for m in ("base", "tuned"))
        rows.append(["judge: share graded correct", _rate_text(b), _rate_text(t),
                     _rate_delta(b, t, dig(judge, "comparison", "correct"))])
        means = [dig(judge, "single", m, "mean") for m in ("base", "tuned")]
        rows.append(["judge mean rating (1-10)", fmt(means[0], 2), fmt(means[1], 2), fmt_delta(*means, 2)])
    return Table("", ["figure", "base", "tuned", "tuned - base (rates: points [95% CI])"], rows, "base-vs-tuned")


def chapter_tables(eval_metrics: dict) -> list[Table]:
    """Accuracy by chapter for the built-in exam and for each external exam set, each with its
    count and Wilson interval; the difference with Newcombe's interval (chapters are not paired)."""
    exams = [("exam", ("exam",))] + [(name, ("exam_sets", name)) for name in exam_sets(eval_metrics)]
    tables = []
    for name, path in exams:
        base = dig(eval_metrics, "base", *path, "by_chapter") or {}
        tuned = dig(eval_metrics, "tuned", *path, "by_chapter") or {}
        rows = []
        for chapter in sorted(set(base) | set(tuned)):
            b, t = (_rate_entry(m, (chapter, "accuracy"), (chapter, "questions"), None, None) for m in (base, tuned))
            questions = dig(tuned, chapter, "questions") or dig(base, chapter, "questions")
            rows.append([chapter or "(no chapter)", fmt(questions, 0), _rate_text(b), _rate_text(t),
                         _rate_delta(b, t, None)])
        if rows:
            tables.append(Table(f"By chapter: {name}", ["chapter", "questions", "base", "tuned",
                                                        "tuned - base, points [95% CI]"], rows))
    return tables


def confusion_tables(eval_metrics: dict) -> list[Table]:
    """Label (rows) x the model's decision (columns): did it search when it should have?"""
    tables = []
    for model in ("base", "tuned"):
        conf = dig(eval_metrics, model, "tools", "confusion") or {}
        rows = [[f"label {label}", fmt(conf.get(f"{label}/call"), 0), fmt(conf.get(f"{label}/no_call"), 0)]
                for label in ("call", "no_call")]
        tables.append(Table(f"Tool decisions: {model}", ["", "decided call", "decided no_call"], rows))
    return tables


def pairwise_table(judge: dict) -> Table:
    pairwise = judge.get("pairwise") or {}
    return Table("Pairwise (each pair judged in both orders)", ["pairwise", "value"],
                 [[label, fmt(pairwise.get(key), d)] for label, key, d in PAIRWISE_ROWS])


def worst_examples(predictions: list[dict], judgments: list[dict], n: int) -> list[dict]:
    """Up to n tuned predictions, worst first: rated ones by ascending judge rating, then unrated
    ones whose answer was scored wrong. Each comes back with `rating` and `judgment` added."""
    ratings = {j["id"]: j for j in judgments
               if j.get("kind") == "single" and j.get("model") == "tuned" and j.get("rating") is not None}
    candidates = []
    for pred in predictions:
        if pred.get("model") != "tuned":
            continue
        judged = ratings.get(pred.get("id"), {})
        wrong = dig(pred, "scores", "correct") is False
        if judged or wrong:
            candidates.append({**pred, "rating": judged.get("rating"), "judgment": judged.get("judgment")})
    candidates.sort(key=lambda p: (p["rating"] is None, p["rating"] or 0,
                                   dig(p, "scores", "correct") is not False, str(p.get("id"))))
    return candidates[:max(n, 0)]


def thin(points: list, limit: int) -> list:
    """Every k-th point (and the last) so that at most about `limit` remain."""
    if len(points) <= limit:
        return points
    k = math.ceil(len(points) / limit)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


def curve_table(curves: dict[str, list[tuple[float, float]]]) -> Table:
    by_step: dict[float, dict[str, float]] = {}
    for name, points in curves.items():
        for step, loss in thin(points, MAX_CURVE_ROWS):
            by_step.setdefault(step, {})[name] = loss
    rows = [[fmt(step, 0)] + [fmt(by_step[step].get(name), 4) if name in by_step[step] else "" for name in curves]
            for step in sorted(by_step)]
    return Table("", ["step"] + [f"{name} loss" for name in curves], rows)






def judge_blocks(judge: dict | None) -> list[tuple[str, object]]:
    blocks: list[tuple[str, object]] = [("h2", "Judge")]
    if judge is None:
        return blocks + [("p", f"The judge did not run ({JUDGE_METRICS} is missing): no ratings, no pairwise verdicts.")]
    j, req, c = judge.get("judge") or {}, judge.get("requests") or {}, judge.get("controls") or {}
    blocks.append(("p", (f"Judge {fmt(j.get('name'))} ({fmt(j.get('model'))}, {fmt(j.get('backend'))}); "
                         f"{fmt(req.get('requests'), 0)} requests, {fmt(req.get('cached'), 0)} cached, "
                         f"{fmt(req.get('errors'), 0)} errors.")))
    controls = (f"on its control items it graded {rate_cell(c.get('accuracy'), c.get('n'), c.get('ci95'), c.get('k'))} "
                "as expected (the reference answer correct; another question's reference and an empty answer "
                f"wrong), and {rate_cell(c.get('position_consistency'), c.get('pairs'), c.get('position_consistency_ci95'))} "
                "of the reference-vs-wrong pairs the same way in both orders; both must reach "
                f"{fmt(c.get('min_control'), 2)}.")
    if not judge_informative(judge):
        return blocks + [("p", "The judge is uninformative: " + controls + " Its grades, ratings and pairwise "
                               "verdicts are not results, and nothing on this page is ranked by them. Use a stronger "
                               "judge (conf/judge/*.yaml) to get them.")]
    counts = "; ".join(f"{m}: {fmt(dig(judge, 'single', m, 'rated'), 0)} rated, "
                       f"{fmt(dig(judge, 'single', m, 'unparsed'), 0)} unparsed" for m in ("base", "tuned"))
    correct = [rate_cell(dig(judge, "single", m, "correct", "rate"), dig(judge, "single", m, "correct", "n"),
                         dig(judge, "single", m, "correct", "ci95"), dig(judge, "single", m, "correct", "k"))
               for m in ("base", "tuned")]
    comparison = dig(judge, "comparison", "correct")
    blocks.append(("p", "The judge is informative: " + controls + f" Graded correct: base {correct[0]}, tuned "
                        f"{correct[1]}; tuned - base {delta_cells(comparison)[0]} points "
                        f"({delta_cells(comparison)[2]}). Single ratings: {counts}."))
    return blocks + [("table", pairwise_table(judge))]


def build_blocks(eval_metrics: dict, judge: dict | None, train: dict | None,
                 curves: dict[str, list[tuple[float, float]]], worst: list[dict]) -> list[tuple[str, object]]:
    """The report as a list of (kind, payload) blocks that both renderers walk:
    h1/h2/p (text), table (Table), example (prediction dict), chart (curves)."""
    blocks: list[tuple[str, object]] = [
        ("h1", "Distillery: base vs tuned"),
        ("p", (f"Backend {fmt(eval_metrics.get('backend'))}; {fmt(eval_metrics.get('test_examples'), 0)} "
               f"held-out test examples, {fmt(eval_metrics.get('test_tokens'), 0)} assistant tokens. "
               "Delta is tuned - base. Prompts per set: "
               + (", ".join(f"{k} {v}" for k, v in (eval_metrics.get("prompts") or {}).items()) or "n/a")
               + "; skipped as too long: "
               + (", ".join(f"{k} {v}" for k, v in (eval_metrics.get("skipped_too_long") or {}).items()) or "none")
               + ".")),
    ]
    blocks += headline_blocks(eval_metrics)
    blocks += judge_blocks(judge)
    blocks += [("h2", "Every figure, base vs tuned"), ("table", metric_table(eval_metrics, judge))]
    blocks += [("h2", "Exam accuracy by chapter")]
    blocks += [("table", t) for t in chapter_tables(eval_metrics)] or [("p", "No exam scores by chapter.")]
    blocks += [("h2", "Tool-call decisions (label x decision)")]
    blocks += [("table", t) for t in confusion_tables(eval_metrics)]
    blocks.append(("h2", "Worst tuned predictions"))
    blocks += [("example", p) for p in worst] or [("p", "No rated or wrong tuned predictions.")]
    blocks.append(("h2", "Training loss"))
    if train:
        keys = ["method", "steps", "train_loss", "eval_loss", "tokens_per_s", "peak_rss_mib", "trainable_params"]
        blocks.append(("p", ", ".join(f"{k} {fmt(train.get(k), 4 if 'loss' in k else 0)}" for k in keys) + "."))
    blocks.append(("chart", curves) if any(curves.values()) else ("p", "No training curves found."))
    return blocks






def example_title(i: int, pred: dict) -> str:
    correct = {True: "correct", False: "wrong", None: "not scored"}[dig(pred, "scores", "correct")]
    return f"{i}. {pred.get('id')} (set {pred.get('set')}; rating {fmt(pred.get('rating'), 0)}; {correct})"


def example_fields(pred: dict) -> list[tuple[str, str]]:
    fields = [("Question", "question"), ("Reference", "reference"), ("Output", "output"), ("Judge", "judgment")]
    return [(label, str(pred[key])) for label, key in fields if pred.get(key) is not None]




