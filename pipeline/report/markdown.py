"""The report's blocks as Markdown (reports/eval.md)."""

from __future__ import annotations

import html
import re

from pipeline.report.blocks import curve_table, example_fields, example_title


def _md_cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _md_fenced(text: str) -> list[str]:
    fence = "`" * max([3] + [len(run) + 1 for run in re.findall("`+", text)])
    return [fence, text, fence, ""]


def render_markdown(blocks: list[tuple[str, object]]) -> str:
    lines, n = [], 0
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + payload, ""]
        elif kind == "p":
            lines += [payload, ""]
        elif kind in ("table", "chart"):
            table = curve_table(payload) if kind == "chart" else payload
            lines += [f"### {table.title}", ""] if table.title else []
            lines += ["| " + " | ".join(map(_md_cell, table.header)) + " |",
                      "|" + "---|" + "---:|" * (len(table.header) - 1)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows] + [""]
        elif kind == "example":
            n += 1
            lines += [f"### {_md_cell(example_title(n, payload))}", ""]
            for label, text in example_fields(payload):
                lines += [f"**{label}**", ""] + _md_fenced(text)
    return "\n".join(lines)
