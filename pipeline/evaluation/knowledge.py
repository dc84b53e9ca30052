"""Knowledge measured where a small student can show it: the test facts, by log-likelihood in cloze form.

Each fact is scored as a cloze (OLMES), ranked against a pool of other answers, asked both ways (forward and
reverse), and split by whether training stated it (`stated`, and `not_stated`: the control).

Design: docs/design/metrics.md.
"""

from __future__ import annotations

import collections
import hashlib
import re

from pipeline.data.chat_format import answer_value
from pipeline.data.text import find, norm
from pipeline.evaluation import likelihood, stats

POOL_MIN = 20   # the fewest other answers a ranked item needs
POOL_MAX = 20   # the gold and 20 others: 21 candidates (each candidate token costs a forward position)
MAX_ANSWER_CHARS = 40  # a short answer: what a cloze continuation can be
CLOZE_OTHERS = 3       # a free-form item's cloze: its answer and three from its pool


def _shape(answer: str) -> str:
    return "number" if norm(answer).replace(".", "").replace(" ", "").isdigit() else "text"


def _order(item_id: str, answers: list[str]) -> list[str]:
    return sorted(answers, key=lambda a: hashlib.sha256(f"{item_id}\n{a}".encode()).digest())


_TOKEN = re.compile(r"[a-z0-9]+|[\u3400-\u9fff]")
RARE_SHARE = 0.02  # a question word in fewer than 2% of the questions names what it is about


def _rare_words(question: str, df: collections.Counter, n: int) -> list[str]:
    """The words of a question (Latin words, numbers, single CJK characters) that fewer than
    RARE_SHARE of all questions hold: what a question is about when no entity is known ("10" in
    "Which element has atomic number 10?", "镁" in "镁的原子序数是多少？")."""
    return sorted({w for w in _TOKEN.findall(norm(question)) if df[w] < max(2, RARE_SHARE * n)})


def build_items(test: list[dict], reverse_rows: list[dict], records: list[dict], text_rows: list[dict]) -> tuple[list[dict], dict]:
    """The items with their context, cloze candidates, ranking pool and group; and what was left
    out, by reason. Forward: each test question with a short answer. Reverse: synth's `reverse`
    row of the test question where the teacher wrote one (the entity asked, ranked too); else the
    question itself is what is asked: "Answer: <gold>" / "Question:", the test question against
    three questions of its site and kind (cloze only: questions are long continuations)."""
    questions = [r for r in records if r.get("kind") in ("mcq", "qa") and r.get("answer") and r.get("question")]
    pools: dict[tuple, set[str]] = {}
    asked: dict[tuple, set[str]] = {}
    for r in questions:
        pools.setdefault(("forward", r.get("site"), r["kind"]), set()).add(answer_value(r).strip())
        asked.setdefault((r.get("site"), r["kind"], _shape(answer_value(r))), set()).add(r["question"].strip())
    df = collections.Counter(w for r in questions for w in set(_TOKEN.findall(norm(r["question"]))))
    by_id = {r["id"]: r for r in records}
    entity_of = {row["fact"]["of"]: row["fact"]["entity"] for row in reverse_rows}
    for row in text_rows + reverse_rows:
        entity = (row.get("fact") or {}).get("entity")
        src = by_id.get(row["source_ids"][0])
        if entity and src:
            pools.setdefault(("reverse", src.get("site"), src["kind"]), set()).add(entity.strip())
    texts = [norm(r["text"]) for r in text_rows]

    def group(rec: dict) -> str:
        """stated: one train text names the fact's entity (or, without one, every rare word of the
        question) and its answer; not_stated: none does; unknown: nothing to look for."""
        words = [norm(entity_of[rec["id"]])] if rec["id"] in entity_of else _rare_words(rec["question"], df, len(questions))
        a = norm(answer_value(rec))
        if not words or not a:
            return "unknown"
        return "stated" if any(find(a, t) >= 0 and all(find(w, t) >= 0 for w in words) for t in texts) else "not_stated"

    items, left_out = [], collections.Counter()
    for rec in test:
        gold = answer_value(rec)
        if not gold or len(gold) > MAX_ANSWER_CHARS:
            left_out["long_answer"] += 1
            continue
        kinds = [("forward", rec["question"], gold, "forward")]
        if rec["id"] in entity_of:
            row = next(r for r in reverse_rows if r["fact"]["of"] == rec["id"])
            kinds.append(("reverse", row["messages"][1]["content"], entity_of[rec["id"]], "reverse"))
        else:
            kinds.append(("reverse", gold, rec["question"].strip(), "asked"))
        for direction, question, answer, pool_key in kinds:
            item_id = f"{direction}/{rec['id']}"
            if pool_key == "asked":
                others = [q for q in asked.get((rec.get("site"), rec["kind"], _shape(gold)), ()) if q != answer]
                pool, cloze = [], [answer, *_order(item_id, others)[:CLOZE_OTHERS]]
                text = f"Answer: {gold}\nQuestion:"
            else:
                others = [a for a in pools.get((pool_key, rec.get("site"), rec["kind"]), ())
                          if norm(a) and norm(a) != norm(answer)]
                same = [a for a in others if _shape(a) == _shape(answer)]
                pool = _order(item_id, same if len(same) >= POOL_MIN else others)[:POOL_MAX]
                options = rec.get("options") or {}
                cloze = (list(options.values()) if direction == "forward" and options
                         else [answer, *pool[:CLOZE_OTHERS]])
                text = likelihood.cloze_question(question)
            if len(cloze) < 1 + CLOZE_OTHERS:
                cloze = []
            if not cloze and len(pool) < POOL_MIN:
                left_out["too_few_candidates"] += 1
                continue
            items.append({"id": item_id, "direction": direction, "source_id": rec["id"], "site": rec.get("site"),
                          "kind": rec["kind"], "context": text, "answer": answer, "cloze": cloze,
                          "pool": pool if len(pool) >= POOL_MIN else [], "group": group(rec)})
    return items, dict(left_out)


def score(scorer, tokenizer, items: list[dict], max_len: int) -> list[dict]:
    """Per item: the cloze choice and whether it is the gold, the gold's rank among gold + pool
    (1 is first), by log-likelihood per character of " <candidate>"."""
    encoded, kept = [], []
    for item in items:
        cands = list(dict.fromkeys([*item["cloze"], item["answer"], *item["pool"]]))
        enc = likelihood.encode_pair(tokenizer, item["context"], [" " + c for c in cands], True)
        if len(enc.context) + max(map(len, enc.continuations)) > max_len:
            continue
        encoded.append(enc)
        kept.append((item, cands))
    rows = []
    for (item, cands), lls in zip(kept, scorer.loglikelihoods(encoded) if encoded else [], strict=True):
        per_char = {c: ll / len(" " + c) for c, ll in zip(cands, lls, strict=True)}
        row = {"id": item["id"], "direction": item["direction"], "group": item["group"]}
        if item["cloze"]:
            choice = max(item["cloze"], key=lambda c: per_char[c])
            row.update(cloze_choice=choice, cloze_correct=choice == item["answer"], cloze_n=len(item["cloze"]))
        if item["pool"]:
            gold = per_char[item["answer"]]
            rank = 1 + sum(per_char[c] > gold for c in item["pool"])
            row.update(rank=rank, rr=1.0 / rank, pool=len(item["pool"]))
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """One model's figures: cloze accuracy, ranking accuracy at 1 and MRR, each with its count and
    interval; then the same by direction and by group."""
    def figures(part: list[dict]) -> dict:
        cloze = [r["cloze_correct"] for r in part if "cloze_correct" in r]
        ranked = [r for r in part if "rank" in r]
        rr = [r["rr"] for r in ranked]
        mean = sum(rr) / len(rr) if rr else None
        spread = stats.paired_mean([0.0] * len(rr), rr) if len(rr) > 1 else None
        cloze_n = [r["cloze_n"] for r in part if "cloze_n" in r]
        pools = [r["pool"] for r in ranked if "pool" in r]
        # chance: what a blind guess scores (1 / candidates, averaged over the items)
        return {"cloze": {**stats.rate(sum(cloze), len(cloze)),
                          "chance": sum(1 / n for n in cloze_n) / len(cloze_n) if cloze_n else None},
                "rank_acc1": {**stats.rate(sum(r["rank"] == 1 for r in ranked), len(ranked)),
                              "chance": sum(1 / (p + 1) for p in pools) / len(pools) if pools else None},
                "mrr": {"mean": mean, "n": len(rr), "ci95": spread["ci95"] if spread else None}}

    out = figures(rows)
    out["by_direction"] = {d: figures([r for r in rows if r["direction"] == d])
                           for d in sorted({r["direction"] for r in rows})}
    out["by_group"] = {g: figures([r for r in rows if r["group"] == g]) for g in sorted({r["group"] for r in rows})}
    return out


def compare(rows: list[dict]) -> dict:
    """knowledge.<figure>[.<direction or group>]: tuned vs base on the same items; and the
    detectable difference (95%, 80% power) of the cloze and ranking figures at this many items."""
    base = {r["id"]: r for r in rows if r["model"] == "base"}
    tuned = {r["id"]: r for r in rows if r["model"] == "tuned"}
    ids = sorted(set(base) & set(tuned))
    out, power = {}, {}
    parts = {"": ids}
    for key in ("direction", "group"):
        for value in sorted({base[i][key] for i in ids}):
            parts[f".{value}"] = [i for i in ids if base[i][key] == value]
    for suffix, part in parts.items():
        for figure, field in (("cloze", "cloze_correct"), ("rank_acc1", "rank")):
            chosen = [i for i in part if field in base[i] and field in tuned[i]]
            flag = (lambda r: r["cloze_correct"]) if figure == "cloze" else (lambda r: r["rank"] == 1)
            verdict = stats.paired([flag(base[i]) for i in chosen], [flag(tuned[i]) for i in chosen])
            if verdict:
                out[f"knowledge.{figure}{suffix}"] = verdict
                if not suffix:
                    n = verdict["n"]
                    discordant = (verdict["tuned_only"] + verdict["base_only"]) / n
                    power[figure] = {"n": n, "discordant": discordant,
                                     "detectable_difference": stats.detectable_difference(n, discordant)}
        ranked = [i for i in part if "rr" in base[i] and "rr" in tuned[i]]
        verdict = stats.paired_mean([base[i]["rr"] for i in ranked], [tuned[i]["rr"] for i in ranked])
        if verdict:
            out[f"knowledge.mrr{suffix}"] = verdict
    return {"comparison": out, "power": power}
