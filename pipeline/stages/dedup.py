"""Stage dedup: exact and near-duplicate removal, leak-free splits, decontamination.

1. Exact duplicates: records whose normal form (case-folded word characters) is equal.
2. Near-duplicates (pipeline/dedup/minhash.py's near_duplicate_clusters): MinHash signatures
   (vectorised, all cores) into a datasketch MinHashLSH index (in memory or in Redis);
   candidate pairs verified by exact Jaccard on the shingle sets; clusters by union-find.
3. One representative per cluster, by this rule: the source `dedup.prefer` names first (crawled
   pages before imported datasets by default), then a record with an explanation before one
   without (more to learn from), then the shortest canonical text (copying sites add marks,
   rarely remove words), then the smallest id. The others are removed, each with the reason
   and the representative it duplicates.
4. Splits per cluster, by a stable hash of the representative's normal form: near-duplicates
   never straddle train/val/test, and a question keeps its split when the corpus grows. An
   imported record whose dataset names its split keeps it, and takes its cluster with it (the
   most held-out one when a cluster's records name several: test, then val).
5. Decontamination: the items of every exam set evaluate scores (eval.exam_sets, eval.general_sets)
   and of `dedup.decontaminate_against` (further eval sets from elsewhere) are
   clustered together with the corpus; a cluster holding one of them sends no record to train.
   (A near-duplicate of a val/test record is in that record's cluster, so it is not in train.)

Outputs: data/dedup/split.jsonl (kept records + cluster_id, split, duplicates),
data/dedup/removed.jsonl (id, where, reason, cluster_id, duplicate_of, jaccard),
metrics/dedup.json and reports/dedup_clusters.md.

    python -m pipeline.stages.dedup        # reads params.yaml (dvc repro dedup)
"""

from __future__ import annotations

import json
import sys

from pipeline.config import sections_or_exit
from pipeline.config.dedup import DedupConfig, decontamination_files
from pipeline.config.eval import EvalConfig
from pipeline.data.jsonl import read_jsonl
from pipeline.dedup.split import dedup, load_external, render_report, too_few_train_rows, write_jsonl
from pipeline.paths import CLEAN, DEDUP_DIR, DEDUP_METRICS, DEDUP_REPORT


def main() -> None:
    params = sections_or_exit(domain=str, dedup=DedupConfig, eval=EvalConfig)
    cfg = params.dedup
    if not CLEAN.exists():
        sys.exit(f"error: no {CLEAN} (run prepare first: dvc repro prepare)")
    records = read_jsonl(CLEAN)
    kept, removed, metrics, report = dedup(records, load_external(decontamination_files(params.eval, params.dedup)), cfg)
    write_jsonl(DEDUP_DIR / "split.jsonl", kept)
    write_jsonl(DEDUP_DIR / "removed.jsonl", removed)
    DEDUP_METRICS.parent.mkdir(parents=True, exist_ok=True)
    DEDUP_METRICS.write_text(json.dumps({k: v for k, v in metrics.items() if k != "seconds"}, indent=2) + "\n")
    DEDUP_REPORT.parent.mkdir(parents=True, exist_ok=True)
    DEDUP_REPORT.write_text(render_report(metrics, report, cfg), encoding="utf-8")
    print(f"dedup: kept {metrics['kept']} of {metrics['input']} ({metrics['exact_duplicates']} exact, "
          f"{metrics['near_duplicates']} near-duplicates, {metrics['decontaminated']} decontaminated) "
          f"in {metrics['seconds']} s; splits {metrics['splits']}")
    problem = too_few_train_rows(metrics, cfg, params.domain)
    if problem:
        sys.exit(f"error: {problem}")


if __name__ == "__main__":
    main()
