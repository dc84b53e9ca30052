"""The documentation: README as a short front door whose links all land, a site that builds
strictly, and the two generated pages (results from a run's files, the configuration reference
from the schema) saying what those files and that schema say."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing

import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import docs_hooks  # noqa: E402


def test_readme_is_a_front_door_and_every_link_lands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", readme)
    assert links and all((ROOT / link).exists() for link in links), [l for l in links if not (ROOT / l).exists()]
    # every page of the site is reachable from the navigation, and the navigation names no missing page
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    listed = set(pages(nav))
    written = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    generated = {"results.md", "reference/configuration.md"}
    assert listed == written | generated, (listed ^ (written | generated))
    # each docs page is linked from the README (the sections that moved are one click away); a
    # dated study is cited from the pages whose figures it holds
    assert {p for p in written if f"docs/{p}" not in links and not p.startswith("studies/")} <= {"index.md"}


def test_the_site_builds_strictly_with_its_generated_pages(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "results/index.html").exists() and (site / "reference/configuration/index.html").exists()
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()  # readable offline


def _rate(k, n):
    return {"rate": k / n, "k": k, "n": n, "ci95": [0.1, 0.9]}


def test_results_come_from_the_runs_files(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "reports").mkdir()
    assert "No run's files here yet" in docs_hooks.results_page(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "cpu", "domain": "mydocs", "sites": {"faq": {}}}))
    (tmp_path / "metrics/synth.json").write_text(json.dumps({
        "teacher": {"model": "m", "backend": "vllm"}, "requests": {"requests": 9, "cached": 4},
        "rows": {"think": {"valid": 7, "rejected": 3}},
        "verify": {"think": {"en": {"pass@1": _rate(5, 8), "pass@n": _rate(3, 4), "yield": _rate(3, 4),
                                    "rejects": {"template_echo": 2, "wrong_answer": 1}}}, "unverifiable": {}}}))
    (tmp_path / "metrics/export.json").write_text(json.dumps({
        "served": {"type": "q8_0", "file": "models/gguf/quant/x-q8_0.gguf"},
        "gguf": {"q8_0": {"size_mib": 278.0, "logits": {"agree": 90, "positions": 100},
                          "format": {"question_prompts": 6, "think_rate": 0.5}, "passed": True, "problems": []}}}))
    (tmp_path / "reports/eval.md").write_text("# Distillery: base vs tuned\n\n## Did tuning help?\n\n| a | b |\n")
    page = docs_hooks.results_page(tmp_path)
    assert "domain `mydocs`" in page and "`faq`" in page
    assert "| think, en | 62.5% (5/8) [10.0, 90.0] | 75.0% (3/4) [10.0, 90.0] | 75.0% (3/4) [10.0, 90.0] | " \
           "template_echo 2, wrong_answer 1 |" in page
    assert "Served by `make serve-gguf`: `models/gguf/quant/x-q8_0.gguf`." in page
    assert "| q8_0 | 278 | 90.0% (90/100) [" in page and "| 50.0% (3/6) [" in page
    assert "### Did tuning help?" in page and "base vs tuned\n\n## Did" not in page


def test_the_configuration_reference_is_the_schema():
    from pipeline.config.params import Params

    page = docs_hooks.configuration_page()

    def walk(cls, seen=()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield cls, f.name
            sub, _ = docs_hooks._nested(hints[f.name])
            if sub and sub not in seen:
                yield from walk(sub, seen + (cls,))

    fields = list(walk(Params))
    assert len(fields) > 200
    for cls, name in fields:
        assert f"| `{name}` |" in page, (cls.__name__, name)
    # a field's docstring is its description, word for word (joined on one line)
    doc = docs_hooks._field_docs(Params)["lr"]
    assert f"| `lr` | `float` | `{yaml.safe_load((ROOT / 'params.yaml').read_text())['lr']}` | {doc} |" in page
    assert "### `sites.<name>`" in page and "question_prefix" in page
