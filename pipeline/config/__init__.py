"""Typed configuration: one dataclass per params.yaml section, one module per section.

A stage checks, and imports, only the sections it reads (`load_sections(train=TrainConfig, seed=int)`), so editing
one section's schema reruns only the stages that read it.

    python -m pipeline.config [params.yaml]     # validate the whole file

Design: docs/design/layout.md; every key: the configuration reference, generated from the field docstrings.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

PARAMS_FILE = Path("params.yaml")

Device = Literal["auto", "cpu", "cuda"]
"""Where the stages that load a model run them (the top-level `device`)."""


class ConfigError(ValueError):
    """A params file that does not match the typed configuration."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _is_choice(value, choices: tuple) -> bool:
    # By type too: YAML's `true` must not pass for a Literal[1], nor 1 for a Literal[True].
    return any(type(value) is type(c) and value == c for c in choices)


def _listed(choices: tuple) -> str:
    return ", ".join(repr(c) for c in choices)


def _convert(value, tp, key: str):
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        # The Literals of a union count as one set of choices, so that a miss lists them all
        # (and says when null is allowed too) instead of one message per Literal.
        choices = tuple(c for arg in args if typing.get_origin(arg) is Literal for c in typing.get_args(arg))
        if _is_choice(value, choices):
            return value
        errors = []
        if choices:
            null = " or null" if type(None) in args else ""
            errors.append(f"{key}: expected one of {_listed(choices)}{null}, got {value!r}")
        for arg in args:
            if arg is type(None) or typing.get_origin(arg) is Literal:
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {tp}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if not _is_choice(value, choices):
            raise ConfigError(f"{key}: expected one of {_listed(choices)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        if typing.get_origin(key_tp) is Literal:
            # Keys from a fixed set (synth.mix's task names): a stray one is reported like an
            # unknown dataclass key, with the keys that are allowed.
            allowed = typing.get_args(key_tp)
            for k in value:
                if not _is_choice(k, allowed):
                    raise ConfigError(f"unknown key '{key}.{k}'; expected one of {_listed(allowed)}")
        elif key_tp is not str:
            raise TypeError(f"unsupported key annotation {key_tp} for {key}")
        return {str(k): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def build(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from `data`, rejecting unknown and missing keys by name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (prefix + ".") if prefix else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{dotted}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{dotted}{key}'{hint}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"missing key '{dotted}{name}'")
        kwargs[name] = _convert(data[name], hints[name], dotted + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks name keys relative to `cls`
        raise ConfigError(f"{dotted}{exc}") from None


def read_params(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml as a mapping; ConfigError names the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; compose it with `make params`") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


class Sections(types.SimpleNamespace):
    """The params.yaml sections a stage loaded, as attributes (`params.train.lr`)."""

    def __getattr__(self, name: str):
        raise AttributeError(f"params section {name!r} was not loaded: add it to the stage's sections_or_exit() or load_sections() call")


def load_sections(path: str | Path = PARAMS_FILE, /, **schema) -> Sections:
    """Check only the top-level keys named, each against its type (`train=TrainConfig`,
    `seed=int`): a stage reads its own sections, and its imports hold only their schemas. A key
    missing from the file is built from its defaults where the type has them (a mapping: empty)."""
    data = read_params(path)
    values = {}
    for key, tp in schema.items():
        try:
            if key in data:
                values[key] = _convert(data[key], tp, key)
            elif typing.get_origin(tp) is dict or (dataclasses.is_dataclass(tp) and all(
                    f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                    for f in dataclasses.fields(tp))):
                values[key] = _convert({}, tp, key)
            else:
                raise ConfigError(f"missing key '{key}'")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return Sections(**values)


def sections_or_exit(**schema) -> Sections:
    """For stage entry points: load_sections, and a bad params file ends the process with one clear line."""
    try:
        return load_sections(PARAMS_FILE, **schema)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
