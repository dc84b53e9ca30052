"""Scorers for evaluation: pure functions from model outputs (and their references) to numbers.

Think blocks, free-form answers, tool calls (validity, the call decision, BFCL-style argument match), the option an
exam answer names, and judge verdicts (read only in the exact form asked for, the candidates' text cut out first).

Design: docs/design/metrics.md.
"""

from __future__ import annotations

import collections
import re
import unicodedata

from pipeline.data import chat_format
from pipeline.evaluation import stats

LETTERS = "ABCDEFGH"


def think_stats(outputs: list[str]) -> dict:
    """Share of outputs that open with one non-empty, closed think block; mean think length
    in characters over those that have one."""
    well_formed, lengths = 0, []
    for text in outputs:
        body = text.split(chat_format.IM_END, 1)[0].lstrip()
        opens, closes = body.count(chat_format.THINK_OPEN), body.count(chat_format.THINK_CLOSE)
        if opens == closes == 1 and body.startswith(chat_format.THINK_OPEN) and body.index(chat_format.THINK_CLOSE) > 0:
            think = body[len(chat_format.THINK_OPEN):body.index(chat_format.THINK_CLOSE)].strip()
            if think:
                well_formed += 1
                lengths.append(len(think))
    return {"rate": well_formed / len(outputs) if outputs else 0.0,
            "mean_chars": sum(lengths) / len(lengths) if lengths else 0.0}


def answer_tokens(text: str) -> list[str]:
    """Words for comparing answers: CJK text by characters, other text by lower-cased words
    (NFKC first, so full-width digits and letters match their ASCII forms)."""
    return re.findall(r"[\u3040-\u30ff\u3400-\u9fff]|[^\W_]+", unicodedata.normalize("NFKC", text).lower())


def token_f1(candidate: str, reference: str) -> float:
    """SQuAD's token F1 over answer_tokens: the harmonic mean of the shares of candidate and
    reference tokens they have in common (counted with multiplicity)."""
    ta, tb = answer_tokens(candidate), answer_tokens(reference)
    if not ta or not tb:
        return 0.0
    common = sum((collections.Counter(ta) & collections.Counter(tb)).values())
    if not common:
        return 0.0
    precision, recall = common / len(ta), common / len(tb)
    return 2 * precision * recall / (precision + recall)


def query_similarity(a: str, b: str) -> float:
    """Token F1 of two free-text arguments (CJK text compared by characters, other text by
    lower-cased words)."""
    return token_f1(a, b)


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation, CJK-aware: NFKC, lower case, punctuation and symbols
    (Unicode categories P and S, full-width ones included) dropped, English articles dropped,
    whitespace collapsed, and no spaces left between CJK characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = " ".join(_ARTICLES.sub(" ", text).split())
    return re.sub(r"(?<=[\u3040-\u30ff\u3400-\u9fff]) (?=[\u3040-\u30ff\u3400-\u9fff])", "", text)


def _contains(tokens: list[str], part: list[str]) -> bool:
    return any(tokens[i:i + len(part)] == part for i in range(len(tokens) - len(part) + 1))


def free_form(answer: str, reference: str, distractors: tuple[str, ...] = ()) -> dict:
    """One answer against its reference: normalised exact match, the reference's tokens as a
    contiguous run of the answer's (whole words, CJK characters one by one: "18" is not found
    in "118", "氢" is in "它是氢") and none of the distractors' (a multiple-choice item's other
    options: an answer that repeats every option contains none), and token F1."""
    a, r = normalise_answer(answer), normalise_answer(reference)
    if not r:
        raise ValueError(f"reference {reference!r} is empty once normalised: it cannot score an answer")
    tokens = answer_tokens(a)
    found = _contains(tokens, answer_tokens(r)) and not any(
        _contains(tokens, answer_tokens(normalise_answer(d))) for d in distractors)
    return {"exact": a == r, "contains": found, "f1": token_f1(a, r)}


def option_distractors(options: dict, answer: str | None) -> tuple[str, ...]:
    """The wrong options of a multiple-choice item as the assistant would give them ("C. Iron")."""
    return tuple(f"{k}. {v}" for k, v in options.items() if k != answer)


def free_form_scores(rows: list[dict]) -> dict:
    """Over rows {"answer", "reference_answer", optionally "distractors"}: exact and contains as
    shares with their Wilson 95% intervals, mean token F1, n."""
    scores = [free_form(r["answer"], r["reference_answer"], tuple(r.get("distractors", ()))) for r in rows]
    n = len(scores)
    exact = sum(s["exact"] for s in scores)
    contains = sum(s["contains"] for s in scores)
    return {"n": n, "exact": exact / n if n else None, "exact_ci95": stats.wilson(exact, n),
            "contains": contains / n if n else None, "contains_ci95": stats.wilson(contains, n),
            "f1": sum(s["f1"] for s in scores) / n if n else None}


def call_matches(call: dict, reference: dict, tools: list[dict], free_text: tuple[str, ...] = ("query",),
                 min_similarity: float = 0.5) -> bool:
    """BFCL-style AST match of one parsed call against the reference call: same name, valid
    against the declared schema, the reference's arguments present; free-text arguments
    similar enough, others equal."""
    if call["name"] != reference["name"] or chat_format.tool_call_error(call, tools):
        return False
    for name, want in reference.get("arguments", {}).items():
        got = call["arguments"].get(name)
        if got is None:
            return False
        if name in free_text and isinstance(got, str) and isinstance(want, str):
            if query_similarity(got, want) < min_similarity:
                return False
        elif got != want:
            return False
    return True


def tool_scores(rows: list[dict]) -> dict:
    """Tool-use figures over rows {"output", "tools", "needs_search" (bool label), and
    optionally "reference_call" ({"name", "arguments"}) for rows labelled with a call}.

    validity: of the outputs that attempt a call (a <tool_call> tag), the share whose every
    call parses and fits the declared schema. confusion: label x prediction counts
    (a prediction is "call" when the output attempts one). arguments: of the rows where both
    label and prediction call and a reference call exists, the share whose first call matches
    (argument_matched of argument_compared).
    """
    confusion = {"call/call": 0, "call/no_call": 0, "no_call/call": 0, "no_call/no_call": 0}
    attempts = valid = compared = matched = 0
    similarities = []
    for row in rows:
        parsed = chat_format.parse_output(row["output"])
        attempted = chat_format.TOOL_CALL_OPEN in row["output"].split(chat_format.IM_END, 1)[0]
        if attempted:
            attempts += 1
            if not parsed["invalid_tool_calls"] and parsed["tool_calls"] and all(
                    chat_format.tool_call_error(c, row["tools"]) is None for c in parsed["tool_calls"]):
                valid += 1
        label = "call" if row["needs_search"] else "no_call"
        confusion[f"{label}/{'call' if attempted else 'no_call'}"] += 1
        reference = row.get("reference_call")
        if row["needs_search"] and attempted and reference:
            compared += 1
            if parsed["tool_calls"]:
                first = parsed["tool_calls"][0]
                matched += call_matches(first, reference, row["tools"])
                if isinstance(first["arguments"], dict) and isinstance(first["arguments"].get("query"), str):
                    similarities.append(query_similarity(first["arguments"]["query"],
                                                         reference["arguments"].get("query", "")))
    total = len(rows)
    return {
        "call_attempts": attempts,
        "valid_attempts": valid,
        "validity": valid / attempts if attempts else None,
        "confusion": confusion,
        "decision_accuracy": (confusion["call/call"] + confusion["no_call/no_call"]) / total if total else None,
        "argument_match": matched / compared if compared else None,
        "argument_compared": compared,
        "argument_matched": matched,
        "query_similarity": sum(similarities) / len(similarities) if similarities else None,
    }


_ANSWER_PATTERNS = [
    re.compile(r"答案\s*(?:是|为|应为|应该是)?\s*[:：]?\s*[（(]?\s*([A-H])(?![A-Za-z])"),
    # Upper-case letters only: "the answer is a metal" names no option.
    re.compile(r"(?i:\b(?:the\s+)?(?:correct\s+)?answer\s*(?:is|:))\s*(?i:option\s+)?[（(]?([A-H])\b"),
    re.compile(r"(?i:\b(?:option|choice))\s+[（(]?([A-H])\b"),
    re.compile(r"^\s*[（(]([A-H])[)）]"),
    # A leading letter with punctuation or alone: "B. Titanium", "B"; not "A noble gas".
    re.compile(r"^\s*([A-H])(?:[.．、:：)）]|\s*$)"),
    re.compile(r"选\s*[（(]?([A-H])(?![A-Za-z])"),
]


def extract_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter an answer names, or None when it names none or several.

    The think block is ignored (reasoning may weigh every option). Explicit forms first
    ("答案：B", "the answer is B", "option B", a leading "B." or "(B)", "选B"), then the
    option texts: exactly one of them must occur in the answer.
    """
    answer = chat_format.parse_output(text)["answer"]
    for pattern in _ANSWER_PATTERNS:
        found = {m for m in pattern.findall(answer) if m in options}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    named = [key for key, option in options.items() if option and option.strip().lower() in answer.lower()]
    # An option contained in another ("钛" in "钛合金") must not count twice: keep the longest.
    named = [k for k in named if not any(k != o and options[k] in options[o] for o in named)]
    return named[0] if len(named) == 1 else None


def exam_scores(rows: list[dict]) -> dict:
    """Accuracy over rows {"output", "options", "answer" (letter), "chapter"}, overall and
    per chapter, with the share of outputs naming no single option."""
    per_chapter = collections.defaultdict(lambda: [0, 0])
    correct = unreadable = 0
    for row in rows:
        choice = extract_choice(row["output"], row["options"])
        unreadable += choice is None
        hit = choice == row["answer"]
        correct += hit
        per_chapter[row.get("chapter") or ""][0] += hit
        per_chapter[row.get("chapter") or ""][1] += 1
    total = len(rows)
    return {
        "questions": total,
        "accuracy": correct / total if total else None,
        "no_choice": unreadable,
        "by_chapter": {c: {"accuracy": h / n, "questions": n} for c, (h, n) in sorted(per_chapter.items())},
    }


def _judge_text(judgment: str, candidates: list[str]) -> str:
    """The judge's own words: every copy of a candidate answer (and its lines) cut out."""
    for candidate in sorted(filter(None, (c.strip() for c in candidates)), key=len, reverse=True):
        judgment = judgment.replace(candidate, " ")
        for line in filter(None, (x.strip() for x in candidate.splitlines())):
            if len(line) >= 4:
                judgment = judgment.replace(line, " ")
    return judgment


_RATING = re.compile(r"^\s*Rating:\s*\[\[(\d{1,2})\]\]\s*$")
_CORRECT = re.compile(r"^\s*Correct:\s*\[\[(yes|no)\]\]\s*$", re.I)
_VERDICT = re.compile(r"^\s*Verdict:\s*\[\[([ABC])\]\]\s*$")


def parse_rating(judgment: str, candidate: str) -> int | None:
    """The 1-10 rating of a single-answer judgment, written `Rating: [[n]]` alone on the
    judgment's last non-empty line, once the candidate's text is cut out; else None."""
    lines = [x for x in _judge_text(judgment, [candidate]).splitlines() if x.strip()]
    if not lines:
        return None
    found = _RATING.match(lines[-1])
    if not found or sum(bool(_RATING.match(x)) for x in lines) != 1:
        return None
    rating = int(found.group(1))
    return rating if 1 <= rating <= 10 else None


def parse_correct(judgment: str, candidate: str) -> bool | None:
    """The yes/no of a reference-guided judgment, written `Correct: [[yes]]` (or no) alone on a
    line, exactly once, once the candidate's text is cut out; else None."""
    found = [m.group(1).lower() for m in map(_CORRECT.match, _judge_text(judgment, [candidate]).splitlines()) if m]
    return found[0] == "yes" if len(found) == 1 else None


def parse_pairwise(judgment: str, answer_a: str, answer_b: str) -> str | None:
    """"A", "B" or "tie" ([[C]]) from `Verdict: [[X]]` alone on the last non-empty line, once
    both answers are cut out; else None."""
    lines = [x for x in _judge_text(judgment, [answer_a, answer_b]).splitlines() if x.strip()]
    if not lines:
        return None
    found = _VERDICT.match(lines[-1])
    if not found or sum(bool(_VERDICT.match(x)) for x in lines) != 1:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found.group(1)]


def swap_consistent(first: str | None, swapped: str | None) -> str | None:
    """The pairwise outcome for (A, B) from a verdict in order (A, B) and one with the
    positions swapped: agreeing verdicts stand, disagreeing ones are a tie, an unreadable
    one makes the pair unreadable (None)."""
    if first is None or swapped is None:
        return None
    unswapped = {"A": "B", "B": "A", "tie": "tie"}[swapped]
    return first if first == unswapped else "tie"
