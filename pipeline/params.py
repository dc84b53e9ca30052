"""Compose params.yaml from conf/ with Hydra, exactly as `dvc exp run -S` does, then validate it.

    python -m pipeline.params                         # defaults (make params)
    python -m pipeline.params profile=tiny train.epochs=2
    python -m pipeline.params --keep-profile          # the profile params.yaml has (make repro, make train)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from pipeline.config import PARAMS_FILE, ConfigError, load_params

CONF_DIR = Path("conf")


def compose(overrides: list[str], out: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> None:
    """Write `out` from conf/config.yaml plus Hydra `overrides`, with DVC's own composer."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(out, str(conf_dir.resolve()), None, "config", str(conf_dir.resolve().parent), overrides)


def kept_profile(overrides: list[str], params_file: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> list[str]:
    """`overrides` with `profile=<the profile params_file was composed with>` first, unless they
    choose one or there is no such file (then conf/config.yaml's default holds)."""
    if any(o.startswith("profile=") for o in overrides) or not params_file.exists():
        return overrides
    try:
        profile = (yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}).get("profile")
    except (yaml.YAMLError, AttributeError):
        return overrides  # the composition below writes a valid file again
    if not isinstance(profile, str) or not (conf_dir / "profile" / f"{profile}.yaml").exists():
        return overrides
    return [f"profile={profile}", *overrides]


def main() -> None:
    overrides = sys.argv[1:]
    if overrides[:1] == ["--keep-profile"]:
        overrides = kept_profile(overrides[1:])
    try:
        compose(overrides)
    except Exception as exc:  # Hydra's errors name the bad override or config group
        sys.exit(f"error: composing {PARAMS_FILE} from {CONF_DIR}/ with {overrides}: {exc}")
    try:
        params = load_params()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    print(f"params: wrote {PARAMS_FILE} (profile {params.profile}, model {params.model.source}, sites {', '.join(params.sites)})")


if __name__ == "__main__":
    main()
