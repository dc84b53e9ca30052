"""Local search over the crawled corpus: the `search` tool of the training data and of the chat client.

SQLite FTS5 with bm25 ranking, CJK text indexed as character bigrams; val and test questions are never indexed, so a
search cannot hand the model a held-out answer. The search_index stage builds the index (`build_index`).

    python -m pipeline.tools.search --query "..."   # ask the built index
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from pathlib import Path

from pipeline.config import sections_or_exit
from pipeline.config.search import SearchConfig
from pipeline.data import chat_format
from pipeline.paths import INDEX

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the local collection of documents and answered questions; "
                       "returns the best matching passages with their source URLs.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look for, in keywords."}},
            "required": ["query"],
        },
    },
}

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    """Index terms: lower-cased words, with CJK runs cut into overlapping bigrams."""
    terms = []
    for word in _WORD.findall(text.casefold()):
        pos = 0
        for run in _CJK_RUN.finditer(word):
            if run.start() > pos:
                terms.append(word[pos:run.start()])
            chars = run.group()
            terms += [chars] if len(chars) == 1 else [chars[i:i + 2] for i in range(len(chars) - 1)]
            pos = run.end()
        if pos < len(word):
            terms.append(word[pos:])
    return terms


def passage(record: dict) -> tuple[str, str]:
    """(title, body) of a record as the index holds it."""
    if record["kind"] == "doc":
        title = " ".join(filter(None, [record.get("chapter"), record.get("section"), record.get("title")]))
        return title, record["text"]
    return record.get("title") or "", record["text"] + ("\n" + record["explanation"] if record.get("explanation") else "")


def build_index(records: list[dict], path: Path) -> int:
    """Write the FTS5 index of the searchable records to `path` (replaced); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    con.execute("CREATE TABLE passages (rowid INTEGER PRIMARY KEY, id TEXT, url TEXT, title TEXT, body TEXT)")
    con.execute("CREATE VIRTUAL TABLE terms USING fts5(title, body, tokenize='unicode61')")
    # documents, and the training split's questions (not imported conversations: not passages)
    searchable = [r for r in records if r["kind"] == "doc" or (r.get("split") == "train" and r["kind"] in ("mcq", "qa"))]
    for rowid, rec in enumerate(sorted(searchable, key=lambda r: r["id"]), start=1):
        title, body = passage(rec)
        con.execute("INSERT INTO passages VALUES (?, ?, ?, ?, ?)", (rowid, rec["id"], rec.get("url"), title, body))
        con.execute("INSERT INTO terms (rowid, title, body) VALUES (?, ?, ?)",
                    (rowid, " ".join(_terms(title)), " ".join(_terms(body))))
    con.commit()
    con.execute("VACUUM")
    con.close()
    tmp.replace(path)
    return len(searchable)


class SearchIndex:
    """Read side of the index: `search(query)` returns ranked passages."""

    def __init__(self, path: Path = INDEX) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no search index (run: dvc repro search_index)")
        self.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def search(self, query: str, top_k: int = 3) -> list[dict]:
        terms = list(dict.fromkeys(_terms(query)))
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        rows = self.con.execute(
            "SELECT p.id, p.url, p.title, p.body, bm25(terms) AS score FROM terms "
            "JOIN passages p ON p.rowid = terms.rowid WHERE terms MATCH ? ORDER BY score, p.id LIMIT ?",
            (match, top_k)).fetchall()
        return [{"id": i, "url": u, "title": t, "text": b, "score": round(-s, 4)} for i, u, t, b, s in rows]

    def close(self) -> None:
        self.con.close()


def format_results(results: list[dict], snippet_chars: int) -> str:
    """The tool response text: numbered passages with their source, or a plain 'no results'."""
    if not results:
        return "No results."
    parts = []
    for n, r in enumerate(results, start=1):
        text = r["text"] if len(r["text"]) <= snippet_chars else r["text"][:snippet_chars - 1] + "…"
        head = f"[{n}] {r['title']} ({r['url']})" if r["title"] else f"[{n}] ({r['url']})"
        parts.append(f"{head}\n{text}")
    return "\n\n".join(parts)


def execute_call(call: dict, index: SearchIndex, top_k: int, snippet_chars: int) -> str:
    """The tool response for one parsed call ({"name", "arguments"}): search results, or what
    is wrong with the call (the model reads that, as it would a failed call anywhere)."""
    error = chat_format.tool_call_error({"name": call["name"], "arguments": call["arguments"]}, [SEARCH_TOOL])
    if error:
        return f"Error: {error}."
    return format_results(index.search(call["arguments"]["query"], top_k), snippet_chars)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.search",
                                     description="Query the local search index (built by dvc repro search_index).")
    parser.add_argument("--query", required=True, help="what to search for; prints the tool response")
    args = parser.parse_args()
    cfg: SearchConfig = sections_or_exit(search=SearchConfig).search
    try:
        index = SearchIndex()
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(format_results(index.search(args.query, cfg.top_k), cfg.snippet_chars))


if __name__ == "__main__":
    main()
