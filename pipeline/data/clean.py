"""Cleaning: raw crawl items and imported records -> clean records (normalised text, the canonical
string dedup compares), every reject counted by reason. The stage is pipeline/stages/prepare.py."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

from pipeline.config.prepare import PrepareConfig
from pipeline.data.text import canonical_text, normalise, restore_cjk_punctuation
from pipeline.paths import CLEAN_DIR, IMPORTED_DIR, RAW_DIR

# What changes when an unchanged page is fetched again (the server's Date header). It stays in
# data/raw, reachable from every later record through its id and url; copied further, a re-crawl
# of the same pages would change data/clean and rerun everything below it, training included.
VOLATILE_FIELDS = ("fetched_at",)


def clean_record(raw: dict, cfg: PrepareConfig) -> tuple[dict | None, str | None]:
    """Return (record, None) or (None, reject reason). The record is the raw item, normalised,
    without VOLATILE_FIELDS."""
    rec = {k: v for k, v in raw.items() if k not in VOLATILE_FIELDS}
    norm = normalise
    if str(raw.get("lang", "")).startswith("zh"):
        def norm(text):
            return restore_cjk_punctuation(normalise(text))
    for key in ("title", "chapter", "section", "question", "answer", "explanation", "text"):
        rec[key] = norm(raw.get(key))
    rec["options"] = {normalise(k): norm(v) for k, v in (raw.get("options") or {}).items()}
    if rec["kind"] == "conversation":
        # an imported conversation is trained on as written (code and layout included); only its
        # canonical text, which dedup compares, is normalised
        rec["text"] = canonical_text(rec)
        if not rec["text"]:
            return None, "empty_conversation"
        if len(rec["text"]) > cfg.max_text_chars:
            return None, "too_long"
        return rec, None
    if rec["kind"] == "doc":
        if not rec["text"]:
            return None, "empty_section"  # a heading with no body of its own
        if len(rec["text"]) > cfg.max_text_chars:
            return None, "too_long"
        return rec, None
    if not rec["question"]:
        return None, "empty_question"
    if len(rec["question"]) < cfg.min_question_chars:
        return None, "short_question"
    if not rec["answer"]:
        return None, "empty_answer"
    if rec["kind"] == "mcq":
        if len(rec["options"]) < 2:
            return None, "mcq_without_options"
        if rec["answer"] not in rec["options"]:
            return None, "answer_not_in_options"
    rec["text"] = canonical_text(rec)
    if len(rec["text"]) > cfg.max_text_chars:
        return None, "too_long"
    return rec, None


def read_raw(files: list[Path], rejects: list[dict]):
    """Yield raw items from the sites' and datasets' JSONL files; a line that is not a JSON
    object is a reject."""
    for path in files:
        if not path.exists():
            stage = f"import@{path.stem}" if path.parent.name == IMPORTED_DIR.name else "crawl"
            sys.exit(f"error: no {path} (run it first: dvc repro {stage})")
    for path in files:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    rejects.append({"id": None, "where": f"{path}:{lineno}", "reason": "malformed_json",
                                    "detail": str(exc)})
                    continue
                if not isinstance(item, dict) or not item.get("id"):
                    rejects.append({"id": None, "where": f"{path}:{lineno}", "reason": "missing_id"})
                    continue
                yield item


def prepare(cfg: PrepareConfig, sites: list[str], raw_dir: Path = RAW_DIR, out_dir: Path = CLEAN_DIR,
            datasets: list[str] = (), imported_dir: Path = IMPORTED_DIR) -> dict:
    """Clean data/raw/<site>.jsonl for each configured site and data/imported/<name>.jsonl for
    each configured dataset (a removed site's or dataset's old file is not read)."""
    rejects: list[dict] = []
    kept: dict[str, dict] = {}
    n_input = 0
    files = [raw_dir / f"{site}.jsonl" for site in sites] + [imported_dir / f"{name}.jsonl" for name in datasets]
    for raw in sorted(read_raw(files, rejects), key=lambda r: r["id"]):
        n_input += 1
        rec, reason = clean_record(raw, cfg)
        if rec is not None and rec["id"] in kept:
            rec, reason = None, "duplicate_id"
        if rec is None:
            rejects.append({"id": raw["id"], "where": raw.get("url"), "reason": reason})
            continue
        kept[rec["id"]] = rec

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "clean.jsonl").open("w", encoding="utf-8") as f:
        for rec in kept.values():
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    with (out_dir / "rejects.jsonl").open("w", encoding="utf-8") as f:
        for rej in rejects:
            f.write(json.dumps(rej, ensure_ascii=False, sort_keys=True) + "\n")
    n_input += sum(1 for r in rejects if r["id"] is None)
    metrics = {
        "input": n_input,
        "kept": len(kept),
        "rejected": dict(sorted(collections.Counter(r["reason"] for r in rejects).items())),
        "kinds": dict(sorted(collections.Counter(r["kind"] for r in kept.values()).items())),
    }
    if datasets:
        metrics["kept_imported"] = sum(r.get("origin") == "import" for r in kept.values())
    return metrics
