"""The report's blocks as one self-contained HTML page (reports/eval.html)."""

from __future__ import annotations

import html

from pipeline.report.blocks import example_fields, example_title
from pipeline.report.svg import svg_loss_chart

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td+td,th+th{text-align:right}th{background:#f3f3f3}p.note{color:#555}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;border:1px solid #e3e3e3;margin:.2em 0 .8em}
.example{border-top:2px solid #ddd;margin-top:1em}"""


def render_html(blocks: list[tuple[str, object]]) -> str:
    esc = html.escape
    parts, n = [], 0
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{esc(payload)}</{kind}>")
        elif kind == "p":
            parts.append(f'<p class="note">{esc(payload)}</p>')
        elif kind == "table":
            parts += [f"<h3>{esc(payload.title)}</h3>"] if payload.title else []
            attr = f' id="{esc(payload.html_id)}"' if payload.html_id else ""
            head = "".join(f"<th>{esc(h)}</th>" for h in payload.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in payload.rows)
            parts.append(f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "chart":
            parts.append(f"<figure>{svg_loss_chart(payload)}</figure>")
        elif kind == "example":
            n += 1
            fields = "".join(f"<h4>{label}</h4><pre>{esc(text)}</pre>" for label, text in example_fields(payload))
            parts.append(f'<section class="example"><h3>{esc(example_title(n, payload))}</h3>{fields}</section>')
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Distillery: base vs tuned</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")
