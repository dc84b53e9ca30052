"""The teacher as the synth and judge stages use it: requests in, outputs out, through a request
cache (pipeline/generation/request_cache.py), a backend (pipeline/generation/engines.py) started only when a request
is missing from the cache; prompt templates with their sha256; per-request seeds.
"""

from __future__ import annotations

import collections
import hashlib
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.teacher import TeacherConfig
from pipeline.data import chat_format
from pipeline.generation.engines import make_engine
from pipeline.generation.request_cache import Request, RequestCache
from pipeline.runtime.digest import tree_sha256

PENDING = "batch_pending"
"""The answer to a request collected for a batch file instead of sent (Teacher.pending)."""


@dataclass(frozen=True)
class Template:
    path: str
    text: str
    sha256: str

    @classmethod
    def load(cls, path: str, key: str) -> Template:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise SystemExit(f"error: {key}: cannot read the prompt template {path} ({exc.strerror})") from None
        return cls(path, data.decode("utf-8"), hashlib.sha256(data).hexdigest())

    def render(self, **values) -> str:
        try:
            return string.Template(self.text).substitute(**values)
        except KeyError as exc:
            raise SystemExit(f"error: {self.path}: unknown placeholder ${exc.args[0]} "
                             f"(known: {', '.join('$' + k for k in values)})") from None


def request_seed(seed: int, task: str, source: str) -> int:
    """Each request its own sampling seed, from synth.seed and what it is for: rows do not share
    a random stream, and a rerun (or a resumed run) samples exactly the same."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{task}/{source}".encode()).digest()[:4], "big") >> 1


def prefills_think(cfg: TeacherConfig) -> bool:
    """Does the teacher's chat template open the think block in the prompt (DeepSeek-R1-Distill's
    ends with `<think>\\n`), so that its completions start inside it? `teacher.prefills_think`
    when set; else read from the prompt its own template renders. A completion prompt is ours
    and opens nothing; a remote server's template cannot be rendered here (set the key)."""
    if cfg.prefills_think is not None:
        return cfg.prefills_think
    if cfg.prompt_format == "completion" or cfg.backend == "openai":
        return False
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False,
                                               add_generation_prompt=True)
    except Exception as exc:  # no tokenizer at hand (offline, no chat template): say so, assume not
        print(f"synth: cannot render {cfg.model}'s chat template ({type(exc).__name__}); assuming it does not "
              "open the think block (set teacher.prefills_think to say)", file=sys.stderr)
        return False
    return chat_format.opens_think(prompt)


def model_identity(model: str) -> str:
    """What the cache keys name the teacher by. A hub id names itself; a local directory (the
    tiny and cpu profiles' teacher is models/base) is named by its content, so that a rebuilt
    model never gets the old model's cached outputs."""
    if not Path(model).is_dir():
        return model
    return f"{model}@sha256:{tree_sha256(model)}"


class Teacher:
    """Requests in, outputs out, through the cache; the backend starts only when a request
    is missing from the cache. The synth stage's teacher, and the judge stage's judge (with its
    own model and cache)."""

    def __init__(self, cfg: TeacherConfig, seed: int, chunk_size: int, cache: RequestCache, stage: str = "synth",
                 device: str | None = None) -> None:
        """`device`: pipeline.runtime.device's answer for params.yaml's `device`, for a vllm backend
        (pipeline.generation.engines.VLLMEngine); None: the installed vLLM build decides."""
        self.cfg, self.seed, self.cache, self.stage, self.device = cfg, seed, cache, stage, device
        self.model = model_identity(self.cfg.model)
        self.chunk_size = chunk_size
        self.backend = None
        self.counts = collections.Counter()
        self.pending: dict[str, tuple[str, Request]] | None = None
        """Set to {} to collect instead of send: every missing request is kept here (key ->
        (what, request)) and answered PENDING; the backend never starts (batch export)."""

    def run(self, requests: list[Request], what: str) -> dict[str, list[str] | str]:
        """key -> outputs, or key -> error text for a request the backend could not serve."""
        keys = [r.key(self.model) for r in requests]
        unique = dict(zip(keys, requests, strict=True))
        found: dict[str, list[str] | str] = dict(self.cache.get_many(list(unique)))
        missing = [k for k in unique if k not in found]
        self.counts["requests"] += len(unique)
        self.counts["cached"] += len(unique) - len(missing)
        if missing and self.pending is not None:
            for k in missing:
                self.pending.setdefault(k, (what, unique[k]))
                found[k] = PENDING
            return found
        if missing:
            from tqdm import tqdm

            if self.backend is None:
                self.backend = make_engine(self.cfg, self.seed, self.device)
            with tqdm(total=len(missing), desc=f"{self.stage} {what}", unit="req", file=sys.stderr) as bar:
                for i in range(0, len(missing), self.chunk_size):
                    chunk = missing[i:i + self.chunk_size]
                    results = self.backend.generate([unique[k] for k in chunk])
                    self.counts["sent"] += len(chunk)
                    done = [(k, unique[k], r.outputs) for k, r in zip(chunk, results, strict=True) if r.error is None]
                    self.cache.put_many(self.model, done)
                    for k, r in zip(chunk, results, strict=True):
                        found[k] = r.outputs if r.error is None else r.error
                        self.counts["errors"] += r.error is not None
                    bar.update(len(chunk))
        return found

    def server_counts(self) -> dict[str, dict]:
        """The openai backend's requests per server (sent, answered, failed, left); {} otherwise."""
        return self.backend.server_counts() if hasattr(self.backend, "server_counts") else {}
