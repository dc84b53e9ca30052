"""MkDocs hooks (mkdocs.yml `hooks:`): the pages no one types. `results.md` is built from what the
last run wrote (metrics/, reports/, params.yaml), so a new run updates the site without an edit;
`reference/configuration.md` is built from the configuration schema's dataclasses and their field
docstrings, so the reference and the code cannot drift apart."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

import yaml
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.evaluation.stats import rate, rate_cell  # noqa: E402


def on_files(files, config):
    files.append(File.generated(config, "results.md", content=results_page(ROOT)))
    files.append(File.generated(config, "reference/configuration.md", content=configuration_page()))
    return files


# --- results: from the run's own files ------------------------------------------------------

def _load(root: Path, rel: str):
    path = root / rel
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else path.read_text(encoding="utf-8")


def _pct(rate: dict | None) -> str:
    """A rate as share (k/n) [95% interval], as the report writes every rate."""
    return rate_cell(rate["rate"], rate["n"], rate["ci95"], rate["k"]) if rate else "n/a"


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def results_page(root: Path) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")) if (root / "params.yaml").exists() else {}
    parts = ["# Results of the last run", "",
             "Built from the files the pipeline wrote (`metrics/`, `reports/`, `params.yaml`) when the site "
             "was built: after `dvc repro` (or `dvc pull`), `make docs` shows that run. Nothing on this page "
             "is typed by hand.", "",
             f"Profile `{params.get('profile', '?')}`, domain `{params.get('domain', '?')}`, "
             f"sites {', '.join(f'`{s}`' for s in (params.get('sites') or {})) or 'none'}.", ""]
    prepare, dedup = _load(root, "metrics/prepare.json"), _load(root, "metrics/dedup.json")
    if prepare and dedup:
        parts += ["## Data", "", _table(["step", "in", "kept", "removed or rejected"], [
            ["prepare (cleaning)", prepare["input"], prepare["kept"], sum((prepare.get("rejected") or {}).values())],
            ["dedup (exact, near-duplicate, decontamination)", dedup["input"], dedup["kept"], dedup["removed"]],
        ]), "", "Splits: " + ", ".join(f"{k} {v}" for k, v in dedup["splits"].items()) + ".", ""]
    synth = _load(root, "metrics/synth.json")
    if synth:
        rows = []
        for task, by_lang in synth["verify"].items():
            if task == "unverifiable":
                continue
            for lang, v in by_lang.items():
                rejects = ", ".join(f"{k} {n}" for k, n in sorted(v["rejects"].items(), key=lambda kv: -kv[1]))
                rows.append([f"{task}, {lang or '-'}", _pct(v["pass@1"]), _pct(v["pass@n"]), _pct(v["yield"]),
                             rejects or "none"])
        parts += ["## Teacher synthesis", "",
                  f"Teacher `{synth['teacher']['model']}` ({synth['teacher']['backend']}); "
                  f"{synth['requests']['requests']} requests, {synth['requests']['cached']} from the cache. "
                  "pass@1: candidates that reach the gold; pass@n: sources with one that does; yield: sources "
                  "that gave a row.", "",
                  _table(["task, language", "pass@1", "pass@n", "yield", "rejects"], rows), "",
                  _table(["task", "valid rows", "rejected"],
                         [[t, r["valid"], r["rejected"]] for t, r in synth["rows"].items()]), ""]
    train = _load(root, "metrics/train.json")
    if train:
        parts += ["## Training", "", _table(["figure", "value"], [
            ["method", train.get("method")], ["steps", train.get("steps")], ["best step", train.get("best_step")],
            ["train loss", train.get("train_loss")], ["eval loss (kept checkpoint)", train.get("eval_loss")],
            ["tokens/s", train.get("tokens_per_s")], ["run time, s", train.get("train_runtime_s")],
            ["train examples", train.get("train_examples")], ["val examples", train.get("val_examples")],
        ]), ""]
    export = _load(root, "metrics/export.json")
    if export:
        rows = []
        for name, g in export["gguf"].items():
            fmt, logits = g.get("format") or {}, g.get("logits") or {}
            top1 = _pct(rate(logits["agree"], logits["positions"])) if logits.get("positions") else "n/a"
            asked = fmt.get("question_prompts", 0)
            think = _pct(rate(round(fmt.get("think_rate", 0) * asked), asked)) if asked else "n/a"
            rows.append([name, f"{g.get('size_mib', 0):.0f}", top1, think,
                         "passed" if g.get("passed") else "failed: " + "; ".join(g.get("problems") or [])])
        parts += ["## Export", "", f"Served by `make serve-gguf`: `{(export.get('served') or {}).get('file', 'none passed')}`.", "",
                  _table(["GGUF", "MiB", "top-1 agreement with the merged model (positions)",
                          "think blocks (question prompts)", "verdict"], rows), ""]
    report = _load(root, "reports/eval.md")
    if report:
        body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 1) + " ", report, flags=re.M)
        body = re.sub(r"^## .*\n", "", body, count=1)  # the report's own title
        parts += ["## Base vs tuned (reports/eval.md)", "", body.strip(), ""]
    if not any((prepare, synth, train, export, report)):
        parts += ["No run's files here yet: run `make repro` (or `dvc pull`), then `make docs`.", ""]
    return "\n".join(parts)


# --- the configuration reference: from the schema ---------------------------------------------

def _field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _nested(tp) -> tuple[type | None, str]:
    """The dataclass a field holds (itself, in a list, as dict values, or optional) and how."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return tp, ""
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return args[0], "[i]"
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1], ".<name>"
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if dataclasses.is_dataclass(arg):
                return arg, ""
    return None, ""


def _type_name(tp) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    text = text or str(tp).replace("typing.", "")
    return re.sub(r"\b(pipeline\.[\w.]+\.)", "", text).replace("NoneType", "None")


def _value(params: dict, path: list[str]):
    node = params
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def configuration_page() -> str:
    from pipeline.config.params import Params

    params_path = ROOT / "params.yaml"
    params = yaml.safe_load(params_path.read_text(encoding="utf-8")) if params_path.exists() else {}
    out = ["# Configuration reference", "",
           "Every key of params.yaml, from the schema `make params` validates against (pipeline/config/, one module per section): its "
           "type and what it does, from the field's own docstring. *Value* is params.yaml's as committed "
           f"(profile `{params.get('profile', '?')}`, domain `{params.get('domain', '?')}`); "
           "`conf/` composes it (Profiles and domains). Generated when the site is built.", ""]
    seen: set = set()

    def section(cls, key: str, path: list[str], level: int) -> None:
        hints = typing.get_type_hints(cls)
        docs = _field_docs(cls)
        title = f"`{key}`" if key else "Top level"
        out.extend(["#" * min(level, 6) + " " + title, ""])
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out.extend([inspect.cleandoc(cls.__doc__), ""])
        rows, children = [], []
        for f in dataclasses.fields(cls):
            sub, how = _nested(hints[f.name])
            value = None if sub or "<" in key or "[i]" in key else _value(params, path + [f.name])
            shown = "" if value is None else "`" + json.dumps(value, ensure_ascii=False)[:60].replace("|", "\\|") + "`"
            doc = docs.get(f.name, "").replace("\n", " ").replace("|", "\\|")
            rows.append([f"`{f.name}`", f"`{_type_name(hints[f.name])}`".replace("|", "\\|"), shown,
                         doc + (f" See `{(key + '.' if key else '') + f.name}{how}` below." if sub else "")])
            if sub:
                children.append((sub, (key + "." if key else "") + f.name + how, path + [f.name]))
        out.extend([_table(["key", "type", "value", "what it does"], [[c for c in r] for r in rows]), ""])
        for sub, sub_key, sub_path in children:
            if (sub, sub_key) in seen:
                continue
            seen.add((sub, sub_key))
            section(sub, sub_key, sub_path, min(level + 1, 3))

    section(Params, "", [], 2)
    return "\n".join(out)
