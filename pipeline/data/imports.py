"""Importing a dataset the user already has (Alpaca, ShareGPT, OpenAI messages, CSV/JSON tables)
as records; every rejected row counted, with its file and line. The stage is
pipeline/stages/import_data.py."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import sys
from pathlib import Path

from pipeline.config.datasets import DatasetConfig

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "tool": "tool", "function_call": "assistant"}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "valid": "val", "test": "test"}
REJECT_LINES_SHOWN = 50


class Reject(Exception):
    """A row that cannot be imported; the message is the reason (a metrics key)."""


# reading: (where, row) pairs; a row that is not JSON comes back as a Reject

def _json_rows(path: Path):
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError:
                yield f"{path}:{lineno}", Reject("malformed_json")


def _json_array_rows(path: Path, text: str):
    """The elements of a JSON array, each with the line it starts on; a syntax error ends the
    file there (counted once, with its line), and the elements before it are kept."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        lineno = text.count("\n", 0, pos) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            yield f"{path}:{lineno}", Reject("malformed_json")
            return
        yield f"{path}:{lineno}", row


def _csv_rows(path: Path):
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        start = reader.line_num + 1
        for row in reader:
            yield f"{path}:{start}", row
            start = reader.line_num + 1


def _loaded_rows(cfg: DatasetConfig):
    """Parquet files and hub datasets, through `datasets.load_dataset`: rows numbered from 1."""
    from datasets import load_dataset

    if cfg.hub:
        data = load_dataset(cfg.hub, revision=cfg.revision, split=cfg.hub_split)
        where = f"hub:{cfg.hub}" + (f"@{cfg.revision}" if cfg.revision else "")
    else:
        data = load_dataset("parquet", data_files=cfg.path, split="train")
        where = cfg.path
    for i, row in enumerate(data, start=1):
        yield f"{where}:row {i}", row


def read_rows(cfg: DatasetConfig):
    if cfg.hub:
        return _loaded_rows(cfg)
    path = Path(cfg.path)
    if not path.exists():
        sys.exit(f"error: datasets: {path} not found")
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return _json_rows(path)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path)
    if suffix == ".parquet":
        return _loaded_rows(cfg)
    sys.exit(f"error: datasets: {path}: expected a .json, .jsonl, .csv or .parquet file")


# converting one row

def _text(row: dict, key: str, reason: str, required: bool = True) -> str:
    value = row.get(key) if key else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Reject(reason)
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise Reject(f"bad_{key}")
    return value.strip()


def _json_value(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _tool_call(call) -> dict:
    """An OpenAI tool call (or a bare {name, arguments}) with its arguments as an object."""
    call = _json_value(call)
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise Reject("bad_tool_call")
    args = _json_value(fn.get("arguments", {}))
    if not isinstance(args, dict):
        raise Reject("bad_tool_arguments")
    return {"type": "function", "function": {"name": fn["name"], "arguments": args}}


def _tools(value) -> list[dict]:
    """Declared tools: OpenAI's [{type: function, function: {...}}] or bare function specs."""
    value = _json_value(value) if value not in (None, "") else []
    if not isinstance(value, list):
        raise Reject("bad_tools")
    tools = []
    for tool in value:
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise Reject("bad_tools")
        tools.append({"type": "function", "function": spec})
    return tools


def _content(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise Reject("unsupported_content")
        return "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise Reject("bad_content")
    return content


def check_conversation(messages: list[dict], tools: list[dict]) -> None:
    """What training needs of a conversation: known roles, a system turn only first, tool
    responses only after a call, calls only to declared tools, and an assistant answer last."""
    if not messages:
        raise Reject("empty_conversation")
    declared = {t["function"]["name"] for t in tools}
    previous = None
    for i, m in enumerate(messages):
        role = m["role"]
        if role not in ROLES:
            raise Reject("bad_role")
        if role == "system" and i > 0:
            raise Reject("misplaced_system")
        if role == "tool" and not (previous == "tool" or (previous == "assistant" and messages[i - 1].get("tool_calls"))):
            raise Reject("orphan_tool_response")
        if role in ("user", "tool") and not m["content"].strip():
            raise Reject("empty_turn")
        if role == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise Reject("empty_turn")
        if any(c["function"]["name"] not in declared for c in m.get("tool_calls") or []):
            raise Reject("undeclared_tool")
        previous = role
    if not any(m["role"] == "user" for m in messages):
        raise Reject("no_user_turn")
    last = messages[-1]
    if last["role"] != "assistant" or last.get("tool_calls") or not last["content"].strip():
        raise Reject("ends_without_answer")


def openai_messages(raw) -> list[dict]:
    if not isinstance(raw, list):
        raise Reject("no_messages")
    messages = []
    for m in raw:
        if not isinstance(m, dict) or "role" not in m:
            raise Reject("bad_turn")
        msg = {"role": m["role"], "content": _content(m)}
        if m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise Reject("bad_tool_call")
            msg["tool_calls"] = [_tool_call(c) for c in m["tool_calls"]]
        messages.append(msg)
    return messages


def sharegpt_messages(row: dict) -> list[dict]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise Reject("no_conversations")
    messages = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) and row["system"] else []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            raise Reject("bad_role")
        value = turn.get("value")
        if not isinstance(value, str):
            raise Reject("bad_turn")
        if turn["from"] == "function_call":
            calls = _json_value(value)
            calls = calls if isinstance(calls, list) else [calls]
            messages.append({"role": "assistant", "content": "", "tool_calls": [_tool_call(c) for c in calls]})
        else:
            messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": value})
    return messages


def alpaca_fields(row: dict) -> tuple[str, str, list[dict] | None]:
    """(question, answer, messages): messages only when the row has a history (more turns)."""
    question = _text(row, "instruction", "missing_instruction")
    extra = _text(row, "input", "", required=False)
    if extra:
        question = f"{question}\n\n{extra}"
    answer = _text(row, "output", "missing_output")
    history = row.get("history") or []
    system = row.get("system") if isinstance(row.get("system"), str) else ""
    if not history and not system:
        return question, answer, None
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                                                for h in history):
        raise Reject("bad_history")
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return question, answer, messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _options(value) -> dict[str, str]:
    value = _json_value(value)
    if value in (None, "", [], {}):
        return {}
    if isinstance(value, dict):
        return {str(k).strip(): str(v).strip() for k, v in value.items()}
    if isinstance(value, list):
        return {chr(ord("A") + i): str(v).strip() for i, v in enumerate(value)}
    raise Reject("bad_options")


def _answer_key(answer, options: dict[str, str]) -> str:
    """An mcq answer as its option key: given as the key, a 0-based index or the option's text."""
    text = str(answer).strip()
    if text in options:
        return text
    if text.upper() in options:
        return text.upper()
    if (isinstance(answer, int) and not isinstance(answer, bool)) or text.isdigit():  # "0" from a CSV too
        if 0 <= int(text) < len(options):
            return list(options)[int(text)]
    by_text = [k for k, v in options.items() if v == text]
    if len(by_text) == 1:
        return by_text[0]
    raise Reject("answer_not_in_options")


def convert(row, cfg: DatasetConfig) -> dict:
    """The record fields of one row (without id, site and url); Reject with the reason."""
    if not isinstance(row, dict):
        raise Reject("not_an_object")
    cols = cfg.columns
    fields: dict = {"kind": "qa", "question": "", "options": {}, "answer": "", "explanation": ""}
    messages, tools = None, []
    if cfg.format == "alpaca":
        fields["question"], fields["answer"], messages = alpaca_fields(row)
    elif cfg.format == "sharegpt":
        messages, tools = sharegpt_messages(row), _tools(row.get("tools"))
    elif cfg.format == "messages":
        messages, tools = openai_messages(row.get("messages")), _tools(row.get("tools"))
    elif cols.messages:
        messages, tools = openai_messages(_json_value(row.get(cols.messages))), _tools(row.get("tools"))
    else:
        fields["question"] = _text(row, cols.question, "empty_question")
        options = _options(row.get(cols.options)) if cols.options and "," not in cols.options else {}
        for column in cols.options.split(",") if "," in cols.options else ():  # C-Eval's A,B,C,D columns
            if str(row.get(column.strip()) or "").strip():
                options[column.strip()] = str(row[column.strip()]).strip()
        raw_answer = row.get(cols.answer)
        if raw_answer is None or str(raw_answer).strip() == "":
            raise Reject("empty_answer")
        kind = _text(row, cols.kind, "", required=False).lower() or ("mcq" if options else "qa")
        if kind not in ("mcq", "qa"):
            raise Reject("bad_kind")
        fields.update(kind=kind, options=options,
                      answer=_answer_key(raw_answer, options) if kind == "mcq" else str(raw_answer).strip(),
                      explanation=_text(row, cols.explanation, "", required=False))
        if kind == "mcq" and len(options) < 2:
            raise Reject("mcq_without_options")
    if messages is not None:
        check_conversation(messages, tools)
        fields = {"kind": "conversation", "question": "", "options": {}, "answer": "", "explanation": "",
                  "messages": messages, "tools": tools}
    value = str(row.get(cols.split) or "").strip() if cols.split else ""
    if value:  # a row without one is split like any record (dedup's hash)
        if value.lower() not in SPLIT_NAMES:
            raise Reject("bad_split")
        fields["split"] = SPLIT_NAMES[value.lower()]
    return fields


def import_dataset(name: str, cfg: DatasetConfig) -> tuple[list[dict], dict]:
    """The records of one dataset, sorted by id, and its metrics."""
    records: dict[str, dict] = {}
    rejects: dict[str, list[str]] = collections.defaultdict(list)
    n_rows = 0
    for where, row in read_rows(cfg):
        if cfg.max_rows and n_rows >= cfg.max_rows:
            break
        n_rows += 1
        line = where.rsplit(":", 1)[-1]
        try:
            if isinstance(row, Reject):
                raise row
            fields = convert(row, cfg)
            if cfg.columns.id:
                row_id = _text(row, cfg.columns.id, "missing_id")
                duplicate = "duplicate_id"
            else:
                row_id = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]
                duplicate = "duplicate_row"
            record_id = f"{name}/{row_id}"
            if record_id in records:
                raise Reject(duplicate)
        except Reject as exc:
            rejects[str(exc)].append(line)
            continue
        records[record_id] = {"id": record_id, "site": name, "origin": "import", "url": where, "title": "",
                              "chapter": "", "section": "", "text": "", "lang": cfg.lang, "encoding": "utf-8",
                              **fields}
    out = [records[k] for k in sorted(records)]
    metrics = {
        "dataset": name,
        "format": cfg.format,
        "source": cfg.path or f"hub:{cfg.hub}" + (f"@{cfg.revision}" if cfg.revision else ""),
        "rows": n_rows,
        "imported": len(out),
        "kinds": dict(sorted(collections.Counter(r["kind"] for r in out).items())),
        "rejected": {reason: len(lines) for reason, lines in sorted(rejects.items())},
        "reject_lines": {reason: lines[:REJECT_LINES_SHOWN] for reason, lines in sorted(rejects.items())},
    }
    if cfg.columns.split:
        metrics["splits_named"] = dict(sorted(collections.Counter(r["split"] for r in out if "split" in r).items()))
    return out, metrics
