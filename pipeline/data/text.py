"""Text normalisation shared by the stages that read crawled or external text: prepare's
normal form and canonical `text`, which evalsets gives external items too (so dedup compares
like with like), the CJK test that dedup's shingling and the chat format's language check use,
and how a fact's words are looked for in a text (synth's knowledge rows, evaluation's groups).
"""

from __future__ import annotations

import json
import re
import unicodedata

_SPACE = re.compile(r"[ \t\u00a0\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
# NFKC turns Chinese full-width punctuation into ASCII; next to CJK text, it goes back.
_CJK_RANGES = "\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef"
_HALF_TO_FULL = {",": "，", "?": "？", "!": "！", ":": "：", ";": "；", "(": "（", ")": "）"}
_CJK_PUNCT = re.compile(rf"(?<=[{_CJK_RANGES}])\s?([,?!:;()])|([,?!:;()])\s?(?=[{_CJK_RANGES}])")


def normalise(text: str | None) -> str:
    """NFKC, unified newlines, runs of spaces collapsed, blank lines squeezed, stripped."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def restore_cjk_punctuation(text: str) -> str:
    return _CJK_PUNCT.sub(lambda m: _HALF_TO_FULL[m.group(1) or m.group(2)], text)


def canonical_text(record: dict) -> str:
    if record["kind"] == "doc":
        return record["text"]
    if record["kind"] == "conversation":
        return conversation_text(record["messages"])
    parts = [record["question"]]
    parts += [f"{k}. {v}" for k, v in record["options"].items()]
    parts.append(f"Answer: {record['answer']}")
    return "\n".join(parts)


_WORD = re.compile(r"\w+")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def is_cjk(text: str, min_share: float = 0.3, sample: int = 256) -> bool:
    """True when CJK characters are at least `min_share` of the word characters among the
    first `sample` characters (a document's script is settled by its start, and this test
    would otherwise cost as much as shingling)."""
    head = text[:sample]
    word_chars = sum(len(w) for w in _WORD.findall(head))
    return word_chars > 0 and len(_CJK_CHAR.findall(head)) >= min_share * word_chars


def conversation_text(messages: list[dict]) -> str:
    """What a conversation says, for dedup: its user and assistant turns (calls included),
    normalised; the system prompt and tool responses are not what makes two conversations alike."""
    parts = []
    for m in messages:
        if m["role"] in ("user", "assistant"):
            parts.append(normalise(m.get("content")))
            parts += [json.dumps(c["function"], ensure_ascii=False, sort_keys=True) for c in m.get("tool_calls") or []]
    return "\n".join(p for p in parts if p)


def norm(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: how a fact's words are looked for in a text."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def find(needle: str, text: str) -> int:
    """Where a normalised needle starts in a normalised text, -1 if absent; a needle that begins or
    ends with a letter or digit must not sit inside a longer word ("s" is not found in "sulfur")."""
    if not needle:
        return -1
    lead = r"(?<![a-z0-9])" if needle[0].isalnum() and needle[0].isascii() else ""
    tail = r"(?![a-z0-9])" if needle[-1].isalnum() and needle[-1].isascii() else ""
    m = re.search(lead + re.escape(needle) + tail, text)
    return m.start() if m else -1
