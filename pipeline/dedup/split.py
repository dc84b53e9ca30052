"""Exact and near-duplicate removal (MinHash clusters, one representative kept), the cluster-aware
train/val/test split (a cluster never straddles splits) and decontamination against exam sets.
The stage is pipeline/stages/dedup.py."""

from __future__ import annotations

import collections
import hashlib
import json
import sys
import time
from pathlib import Path

from pipeline.config.dedup import DedupConfig
from pipeline.data.evalsets import EvalSetError, load_eval_set
from pipeline.dedup import minhash

SPLITS = ("train", "val", "test")
ORIGIN_WORDS = {"crawl": "crawled", "import": "imported"}


def representative_key(rec: dict, prefer: list[str]) -> tuple:
    """The module docstring's rule: the preferred source, then explanation first, then shortest
    text, then smallest id."""
    return (prefer.index(rec.get("origin", "crawl")), not rec.get("explanation"), len(rec["text"]), rec["id"])


def split_of(text: str, cfg: DedupConfig) -> str:
    digest = hashlib.sha256(minhash.normal_form(text).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    if bucket < cfg.splits.train:
        return "train"
    if bucket < cfg.splits.train + cfg.splits.val:
        return "val"
    return "test"


def load_external(paths: list[str]) -> list[dict]:
    """The items of the eval sets to keep out of training (pipeline.config.dedup.decontamination_files)."""
    items = []
    for path in paths:
        try:
            items += load_eval_set(path)
        except EvalSetError as exc:
            sys.exit(f"error: eval.exam_sets / dedup.decontaminate_against: {exc}")
    return items


def too_few_train_rows(metrics: dict, cfg: DedupConfig, domain: str) -> str | None:
    """Why the run stops here (before any model work), or None: a domain whose data leaves fewer
    train rows than dedup.min_train_rows would go on to a teacher and a fine-tune on a handful
    of examples."""
    train = metrics["splits"].get("train", 0)
    if train >= cfg.min_train_rows:
        return None
    return (f"dedup left {train} train rows of {metrics['input']} records (kept {metrics['kept']}: "
            f"{metrics['splits']}), fewer than dedup.min_train_rows = {cfg.min_train_rows}, for domain "
            f"{domain!r}. Add sites or pages to the domain (python -m pipeline.crawl <site> --preview shows "
            "what a site yields), or lower dedup.min_train_rows knowingly; reports/dedup_clusters.md shows what was removed")


def dedup(records: list[dict], external: list[dict], cfg: DedupConfig) -> tuple[list[dict], list[dict], dict, list[dict]]:
    """Return (kept records with cluster_id/split/duplicates, removed, metrics, clusters for the report)."""
    started = time.perf_counter()
    n = len(records)
    entries = records + external
    found = minhash.near_duplicate_clusters([e["text"] for e in entries], cfg)
    sh = minhash.shingling(cfg)

    kept = {r["id"]: dict(r, cluster_id=r["id"], split=r.get("split") or split_of(r["text"], cfg), duplicates=[])
            for r in records}
    removed: list[dict] = []
    report: list[dict] = []
    decontaminated = 0
    near_clusters = 0
    for group in found.groups:
        members = [records[i] for i in group if i < n]
        evals = [external[i - n] for i in group if i >= n]
        if not members:
            continue
        rep = min(members, key=lambda r: representative_key(r, cfg.prefer))
        named = [m["split"] for m in members if m.get("split")]
        if named:
            kept[rep["id"]]["split"] = max(named, key=SPLITS.index)
        rep_norm = minhash.normal_form(rep["text"])
        rep_set = minhash.shingle_set(rep["text"], sh)
        row = {"rep": rep, "split": kept[rep["id"]]["split"], "members": [],
               "evals": [(e, round(minhash.jaccard(rep_set, minhash.shingle_set(e["text"], sh)), 4)) for e in evals]}
        distinct = {rep_norm}
        for rec in members:
            if rec is rep:
                continue
            norm = minhash.normal_form(rec["text"])
            distinct.add(norm)
            score = round(minhash.jaccard(rep_set, minhash.shingle_set(rec["text"], sh)), 4)
            reason = "exact_duplicate" if norm == rep_norm else "near_duplicate"
            removed.append({"id": rec["id"], "where": rec.get("url"), "reason": reason,
                            "cluster_id": rep["id"], "duplicate_of": rep["id"], "jaccard": score})
            kept[rep["id"]]["duplicates"].append(rec["id"])
            del kept[rec["id"]]
            row["members"].append((rec, reason, score))
        near_clusters += len(distinct) > 1
        if evals and kept[rep["id"]]["split"] == "train":
            decontaminated += 1
            del kept[rep["id"]]
            item, score = row["evals"][0]
            removed.append({"id": rep["id"], "where": rep.get("url"), "reason": "decontaminated",
                            "cluster_id": rep["id"], "duplicate_of": item["where"], "jaccard": score})
            row["decontaminated"] = True
        report.append(row)

    out = sorted(kept.values(), key=lambda r: r["id"])
    reasons = collections.Counter(r["reason"] for r in removed)
    metrics = {
        "input": n,
        "external_items": len(external),
        "exact_duplicates": reasons["exact_duplicate"],
        "near_duplicates": reasons["near_duplicate"],
        "near_duplicate_clusters": near_clusters,
        "decontaminated": decontaminated,
        "removed": len(removed),
        "kept": len(out),
        "splits": {s: sum(r["split"] == s for r in out) for s in SPLITS},
        "lsh": {"storage": cfg.lsh_storage, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
                "bands": found.bands, "rows": found.rows, "candidate_pairs": found.candidate_pairs,
                "verified_pairs": found.verified_pairs},
        "shingles": found.shingle_modes,
        "seconds": round(time.perf_counter() - started, 3),
    }
    imported = [r for r in records if r.get("origin") == "import"]
    if imported:
        removed_ids = {r["id"] for r in removed}
        metrics["imported"] = {"input": len(imported), "kept": sum(r["id"] not in removed_ids for r in imported),
                               "split_from_data": sum(bool(r.get("split")) for r in imported), "prefer": cfg.prefer}
    return out, sorted(removed, key=lambda r: r["id"]), metrics, report


def _excerpt(text: str, width: int = 140) -> str:
    flat = " / ".join(line for line in text.splitlines() if line)
    flat = flat.replace("|", "\\|")
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def render_report(metrics: dict, report: list[dict], cfg: DedupConfig) -> str:
    lsh = metrics["lsh"]
    lines = [
        "# Dedup clusters",
        "",
        f"{metrics['input']} records in, {metrics['kept']} kept: {metrics['exact_duplicates']} exact and "
        f"{metrics['near_duplicates']} near-duplicates removed, {metrics['decontaminated']} decontaminated "
        f"against {metrics['external_items']} eval-set items. Splits: "
        + ", ".join(f"{k} {v}" for k, v in metrics["splits"].items()) + ".",
        "",
        f"MinHash {lsh['num_perm']} permutations, LSH {lsh['bands']} bands x {lsh['rows']} rows ({lsh['storage']}), "
        f"threshold {lsh['threshold']}; {lsh['candidate_pairs']} candidate pairs, {lsh['verified_pairs']} verified. "
        "Representative: " + (f"{' before '.join(ORIGIN_WORDS[o] for o in cfg.prefer)} records, then "
                              if metrics.get("imported") else "")
        + "explanation first, then shortest text, then smallest id.",
        "",
    ]
    biggest = sorted(report, key=lambda r: (-len(r["members"]) - len(r["evals"]), r["rep"]["id"]))
    shown = [r for r in biggest if r.get("decontaminated")][:3]
    shown += [r for r in biggest if r not in shown][:max(0, cfg.report_clusters - len(shown))]
    for row in shown:
        rep = row["rep"]
        status = "decontaminated (not trained on)" if row.get("decontaminated") else f"kept, {row['split']}"
        lines += [f"## {rep['id']}", "", "| record | status | Jaccard | text |", "|---|---|---|---|",
                  f"| {rep['id']} | representative, {status} | 1 | {_excerpt(rep['text'])} |"]
        for rec, reason, score in row["members"]:
            lines.append(f"| {rec['id']} | {reason.replace('_', ' ')} | {score} | {_excerpt(rec['text'])} |")
        for item, score in row["evals"]:
            lines.append(f"| {item['where']} | eval-set item | {score} | {_excerpt(item['text'])} |")
        lines.append("")
    if not shown:
        lines.append("No duplicates found.")
    return "\n".join(lines) + "\n"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
