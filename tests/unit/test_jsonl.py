"""The one JSONL reader (pipeline.data.jsonl)."""

import json

import pytest

from pipeline.data.jsonl import read_jsonl


def test_records_in_order_blank_lines_skipped_and_a_line_separator_inside_a_record_kept(tmp_path):
    rows = [{"id": "a", "text": "one\u2028two"}, {"id": "b", "text": "三"}]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n\n" + json.dumps(rows[1], ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert read_jsonl(path) == rows


def test_a_broken_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON line"):
        read_jsonl(path)
