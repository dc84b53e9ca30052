"""Where the pipeline's files live, relative to the project root (the stages run there, as DVC
runs them). Each path is named once, here; dvc.yaml names the same paths as deps and outs.
A stage's functions take these as defaults, so tests can point them at a temporary workspace."""

from pathlib import Path

# crawl
RAW_DIR = Path("data/raw")
HTTP_CACHE_DIR = Path("data/httpcache")
CRAWL_STATE_DIR = Path("data/crawl_state")
CRAWL_METRICS_DIR = Path("metrics/crawl")
# import@<dataset>
IMPORTED_DIR = Path("data/imported")
IMPORT_METRICS_DIR = Path("metrics/import")
# prepare
CLEAN_DIR = Path("data/clean")
CLEAN = CLEAN_DIR / "clean.jsonl"
PREPARE_METRICS = Path("metrics/prepare.json")
# dedup
DEDUP_DIR = Path("data/dedup")
SPLIT = DEDUP_DIR / "split.jsonl"
DEDUP_METRICS = Path("metrics/dedup.json")
DEDUP_REPORT = Path("reports/dedup_clusters.md")
# base_model
BASE_DIR = Path("models/base")
BASE_METRICS = Path("metrics/base_model.json")
# search_index
INDEX = Path("data/search/index.sqlite")
# synth
SFT_DIR = Path("data/sft")
SFT_TEST = SFT_DIR / "test.jsonl"
SYNTH_CACHE = Path("data/synth_cache/requests.sqlite")
SYNTH_METRICS = Path("metrics/synth.json")
# train
ADAPTER_DIR = Path("models/adapter")
CHECKPOINT_DIR = Path("models/checkpoints")
TRAIN_LIVE_DIR = Path("reports/train")
TRAIN_CURVE = TRAIN_LIVE_DIR / "plots/metrics/train/loss.tsv"
EVAL_CURVE = TRAIN_LIVE_DIR / "plots/metrics/eval/loss.tsv"
TRAIN_METRICS = Path("metrics/train.json")
# evaluate
EVAL_REPORT_DIR = Path("reports/eval")
PREDICTIONS = EVAL_REPORT_DIR / "predictions.jsonl"
EVAL_METRICS = Path("metrics/eval.json")
# judge
JUDGMENTS = Path("reports/judge/judgments.jsonl")
JUDGE_CACHE = Path("data/judge_cache/requests.sqlite")
JUDGE_METRICS = Path("metrics/judge.json")
# report
REPORT_MD = Path("reports/eval.md")
REPORT_HTML = Path("reports/eval.html")
# export: merge, convert, quantize, verify_export
MERGED_DIR = Path("models/merged")
FULL_DIR = Path("models/gguf/full")
QUANT_DIR = Path("models/gguf/quant")
EXPORT_METRICS = Path("metrics/export.json")
# summary: the figures experiments are compared by (the one DVC metrics file)
SUMMARY_METRICS = Path("metrics/summary.json")
