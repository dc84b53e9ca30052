"""Compose params.yaml from conf/ with Hydra, exactly as `dvc exp run -S` does, then validate it.

    python -m pipeline.config.compose                                   # the defaults (make params)
    python -m pipeline.config.compose profile=tiny domain=mydocs train.epochs=2
    python -m pipeline.config.compose --keep            # compose again, same choice (make repro, make train)

A composition with overrides is a choice that sticks (conf/selection/current.yaml, which conf/config.yaml loads
last), so `make repro`, `make train` and `dvc exp run -S` keep it. Docs: docs/profiles.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from pipeline.config import PARAMS_FILE, ConfigError
from pipeline.config.params import load_params

CONF_DIR = Path("conf")
SELECTION = Path("selection") / "current.yaml"  # under the conf folder

HEADER = """\
# @package _global_
# Written by `python -m pipeline.config.compose` (make params): the choice conf/config.yaml loads last, which
# make repro, make train and dvc exp run -S keep until the next `make params`. Commit it with
# params.yaml; edit it, or compose again, to choose otherwise.
"""


class SelectionError(ValueError):
    """An override that cannot be kept in the selection file."""


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise SelectionError(f"{dotted}: sets a key under {key}, which another override sets to a value")
    tree[last] = value


def selection_yaml(overrides: list[str], conf_dir: Path = CONF_DIR) -> str:
    """The selection file for `overrides` (Hydra's override grammar): config-group choices become
    defaults-list entries (`profile=gpu` -> `override /profile: gpu`, `+site@sites.x=y` ->
    `/site@sites.x: y`), every other override a value at its dotted key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # Hydra's OverrideParseException names the override
        raise SelectionError(str(exc)) from None
    defaults: list[dict] = []
    values: dict = {}
    for o in parsed:
        line = o.input_line
        if o.is_delete():
            raise SelectionError(f"{line}: a deletion cannot be kept for later compositions; edit conf/ instead")
        if o.is_sweep_override():
            raise SelectionError(f"{line}: a sweep is for `dvc exp run --queue -S`, not for `make params`")
        if (conf_dir / o.key_or_group).is_dir():  # a config group: choose one of its files
            name = f"/{o.key_or_group}" + (f"@{o.package}" if o.package else "")
            defaults.append({(name if o.is_add() or o.is_force_add() else f"override {name}"): o.value()})
        else:
            _set(values, o.key_or_group, o.value())
    values["overrides"] = list(overrides)
    doc = ({"defaults": defaults} if defaults else {}) | values
    return HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def compose(overrides: list[str], out: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> None:
    """Write `out` from conf/config.yaml plus Hydra `overrides`, with DVC's own composer."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(out, str(conf_dir.resolve()), None, "config", str(conf_dir.resolve().parent), overrides)


def choose(overrides: list[str] | None, out: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR):
    """Compose `out` and validate it, making `overrides` the kept choice (None: keep the current
    one; []: the defaults). A composition or validation that fails leaves `out` and the previous
    choice as they were: nothing already chosen is lost. Returns the validated Params."""
    selection = conf_dir / SELECTION
    before = selection.read_bytes() if selection.exists() else None
    if overrides:
        text = selection_yaml(overrides, conf_dir)
        selection.parent.mkdir(parents=True, exist_ok=True)
        selection.write_text(text, encoding="utf-8")
    elif overrides is not None:
        selection.unlink(missing_ok=True)
    trial = out.with_name(f".{out.stem}.composing.yaml")
    try:
        compose([], trial, conf_dir)
        try:
            params = load_params(trial)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(trial), str(out))) from None
        trial.replace(out)
        return params
    except BaseException:
        if before is None:
            selection.unlink(missing_ok=True)
        else:
            selection.write_bytes(before)
        raise
    finally:
        trial.unlink(missing_ok=True)


def main() -> None:
    args = sys.argv[1:]
    keep = args[:1] == ["--keep"]
    overrides = args[1:] if keep else args
    try:
        params = choose(None if keep and not overrides else overrides)
    except (SelectionError, ConfigError) as exc:
        sys.exit(f"error: {exc}")
    except Exception as exc:  # Hydra's errors name the bad override or config group
        sys.exit(f"error: composing {PARAMS_FILE} from {CONF_DIR}/ with {overrides}: {exc}")
    kept = f"; overrides {' '.join(params.overrides)}" if params.overrides else ""
    print(f"params: wrote {PARAMS_FILE} (profile {params.profile}, domain {params.domain}, "
          f"model {params.model.source}, sites {', '.join(params.sites)}{kept})")


if __name__ == "__main__":
    main()
