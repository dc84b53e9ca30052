"""Models named by hub id: downloaded on first use, then used from the local cache without asking the hub.

Once every hub id a stage names is cached, the stage sets HF_HUB_OFFLINE for itself and the processes it starts (a
user's own HF_HUB_OFFLINE always wins). The cache is looked up on disk, not through huggingface_hub, which reads
HF_HUB_OFFLINE once, at import: the decision must come first. Docs: docs/gpus.md ("Hub models").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# org/name, as the hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(name: str | None) -> bool:
    """A hub repository id rather than a local path: a name whose first part is a local folder
    (models/base, before base_model writes it) is a path, as transformers would read it."""
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name.split("/", 1)[0]).is_dir()


def hub_cache() -> Path:
    """huggingface_hub's cache folder, by its own environment variables and default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached(repo_id: str, cache: Path | None = None) -> bool:
    """Does the cache hold a snapshot of model `repo_id` (its config.json)?"""
    folder = (cache or hub_cache()) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return any(folder.glob("*/config.json"))


def offline_when_cached(names: list[str | None], env: dict | None = None) -> str:
    """Set HF_HUB_OFFLINE=1 in `env` (os.environ) when every hub id among `names` is cached.
    Returns what was decided, for the stage's log: 'user' (HF_HUB_OFFLINE already set), 'local'
    (no hub id), 'cached' (turned off) or 'download'."""
    env = os.environ if env is None else env
    if "HF_HUB_OFFLINE" in env:
        return "user"
    ids = [n for n in names if is_hub_id(n)]
    if not ids:
        return "local"
    if all(cached(i) for i in ids):
        env["HF_HUB_OFFLINE"] = "1"
        return "cached"
    return "download"
