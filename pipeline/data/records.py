"""Reading the records that flow between stages, and turning them into token ids.

Split records (dedup's), SFT rows (synth's) and crawled questions as conversations (for the held-out loss) are read
here and tokenised through pipeline.data.chat_format, the one template, so train and evaluate see the same ids.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

from pipeline.data import chat_format
from pipeline.data.jsonl import read_jsonl
from pipeline.data.text import is_cjk
from pipeline.paths import SFT_DIR, SPLIT


def load_split(split: str, split_path: Path = SPLIT) -> list[dict]:
    """The question records (mcq, qa) of one split; document sections feed search, not SFT."""
    records = read_jsonl(split_path)
    return [r for r in records if r["split"] == split and r["kind"] in ("mcq", "qa")]


def test_questions(split_path: Path = SPLIT, sft_dir: Path = SFT_DIR) -> tuple[list[dict], str]:
    """The held-out questions evaluation and export's check ask, sorted by id, and where they come
    from: the test split's crawled (or imported) questions, `crawl`; where the domain has none (a
    domain of documents only), `teacher`: the questions the teacher wrote from the test split's
    sections (its valid qgen rows in data/sft/test.jsonl), held out by the same cluster-aware
    split, as records (id, question, answer citing the section, clause, url)."""
    crawled = sorted(load_split("test", split_path), key=lambda r: r["id"])
    if crawled:
        return crawled, "crawl"
    written = written_test_questions(sft_dir)
    return (written, "teacher") if written else ([], "crawl")


def written_test_questions(sft_dir: Path = SFT_DIR) -> list[dict]:
    """The questions the teacher wrote from the test split's sections (its valid qgen rows in
    sft_dir/test.jsonl), as records sorted by id; none when there is no such file."""
    if not (sft_dir / "test.jsonl").exists():
        return []
    records = []
    for row in load_sft("test", sft_dir):
        if row["task"] != "qgen" or not row.get("valid", True):
            continue
        question, answer = (m["content"] for m in row["messages"][1:3])
        records.append({"id": row["id"].removeprefix("qgen/"), "kind": "qa", "question": question, "answer": answer,
                        "options": {}, "explanation": "", "lang": "zh" if is_cjk(question) else "en",
                        "url": row["urls"][0], "split": "test", "source_ids": row["source_ids"],
                        "clause": (row.get("provenance") or {}).get("clause", ""), "chapter": ""})
    return sorted(records, key=lambda r: r["id"])


def load_sft(split: str, sft_dir: Path = SFT_DIR) -> list[dict]:
    """The valid SFT rows of one split (train, val or test), as the synth stage wrote them."""
    path = sft_dir / f"{split}.jsonl"
    if not path.exists():
        sys.exit(f"error: no {path} (run the synth stage first: dvc repro synth)")
    return read_jsonl(path)


def repeat_rows(rows: list[dict], repeat: dict[str, int]) -> list[dict]:
    """Each row as many times as `repeat` names for its task (once when not named), in order."""
    return [row for row in rows for _ in range(repeat.get(row["task"], 1))]


def encode_rows(tokenizer, rows: list[dict], max_len: int) -> tuple[list[dict], collections.Counter]:
    """Tokenised SFT rows (messages with their declared tools; a text row's text, every token
    trained), and counts per task: `tokens/<task>`, `truncated/<task>` (rows cut to `max_len`) and
    `no_labels/<task>` (rows dropped because truncation left no assistant token)."""
    examples, counts = [], collections.Counter()
    for row in rows:
        if "text" in row:
            enc = chat_format.encode_text(tokenizer, row["text"], max_len=max_len)
        else:
            enc = chat_format.encode(tokenizer, row["messages"], tools=row.get("tools") or None, max_len=max_len)
        counts[f"tokens/{row['task']}"] += len(enc["input_ids"])
        if enc.pop("truncated"):
            counts[f"truncated/{row['task']}"] += 1
            if all(label == -100 for label in enc["labels"]):
                counts[f"no_labels/{row['task']}"] += 1
                continue
        examples.append(enc)
    return examples, counts


def encode_records(tokenizer, records: list[dict], system_prompt: str, max_len: int,
                   think: bool = False) -> tuple[list[dict], int]:
    """Tokenised examples (input_ids, labels) and how many were truncated; `think`: the
    explanation as a think block (chat.think_from_explanation), as the plain rows have it."""
    examples, truncated = [], 0
    for rec in records:
        enc = chat_format.encode(tokenizer, chat_format.record_to_messages(rec, system_prompt, think), max_len=max_len)
        truncated += enc.pop("truncated")
        examples.append(enc)
    return examples, truncated
