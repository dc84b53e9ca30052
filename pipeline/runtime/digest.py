"""Content digests of files and folders: what our own caches and resumes key on (never paths
or modification times, which survive a rebuild that changed the content)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_sha256(path: str | Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and bytes, in sorted order)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
