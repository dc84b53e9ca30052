"""Generation requests and their cache: every teacher (or judge) request keyed by the sha256 of
(model id, full prompt, sampling parameters, seed, output schema), its outputs in SQLite.

The databases are persisted DVC outputs (data/synth_cache/requests.sqlite, and the judge's in
data/judge_cache): they survive `dvc repro`, travel with `dvc push`, and a rerun (or a run after
a crash) sends only the requests it does not hold. Writes are committed chunk by chunk (SQLite's rollback journal:
a chunk killed half-written is rolled back when the file is next opened).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Request:
    """One teacher request: a conversation to continue, how to sample, and an optional JSON
    schema the output must follow (structured outputs)."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs: the full prompt, system turn included."""
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    json_schema: str | None = None
    """The schema as canonical JSON text (a str, so that a Request is hashable)."""
    completion: bool = False
    """Send the (single) user turn's text as a raw completion prompt, no chat template."""
    stop: tuple[str, ...] = ()
    """Strings that end the output."""
    prompt_ids: tuple[int, ...] | None = None
    """The whole prompt as token ids, already rendered (evaluate's prompts); `messages` unused."""
    tags: dict = field(default_factory=dict, compare=False, hash=False)
    """What the request is for (task, source ids): not part of the key."""

    def chat(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def prompt(self) -> str:
        """The completion prompt: the last turn's text."""
        return self.messages[-1][1]

    def sampling(self) -> dict:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}

    def key(self, model: str) -> str:
        body = {"model": model, "messages": self.messages, "sampling": self.sampling(), "seed": self.seed,
                "json_schema": self.json_schema}
        if self.json_schema:
            body["json_whitespace"] = "none"  # backends are asked for compact JSON
        if self.completion:  # named only when used: chat requests keep the keys they always had
            body["completion"] = True
        if self.stop:
            body["stop"] = list(self.stop)
        if self.prompt_ids is not None:
            body["prompt_ids"] = list(self.prompt_ids)
        return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


class RequestCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(path)
        self.con.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                         "request TEXT NOT NULL, outputs TEXT NOT NULL)")
        self.con.commit()

    def get_many(self, keys: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.con.execute(f"SELECT key, outputs FROM responses WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
            found.update({k: json.loads(o) for k, o in rows})
        return found

    def put_many(self, model: str, items: list[tuple[str, Request, list[str]]]) -> None:
        """Store (key, request, outputs) and commit: one chunk, all or nothing."""
        with self.con:
            self.con.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                [(k, model, json.dumps({"messages": r.messages, "sampling": r.sampling(), "seed": r.seed,
                                        "json_schema": r.json_schema, "completion": r.completion,
                                        "stop": list(r.stop)}, ensure_ascii=False),
                  json.dumps(outs, ensure_ascii=False)) for k, r, outs in items])

    def __len__(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.con.close()
