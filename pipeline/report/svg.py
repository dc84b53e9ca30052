"""The loss curves as an inline SVG chart (no plotting library: the report is one self-contained file)."""

from __future__ import annotations

import html
import math

COLORS = ["#1f77b4", "#d62728", "#2ca02c"]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (multiples of 1, 2 or 5 x 10^k) between lo and hi."""
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step)
    return [round(k * step, 10) for k in range(first, math.floor(hi / step) + 1)]


def svg_loss_chart(curves: dict[str, list[tuple[float, float]]], width: int = 720, height: int = 360) -> str:
    """Line chart of loss against step, one line per curve, with ticks and a legend."""
    points = [p for pts in curves.values() for p in pts]
    if not points:
        return ""
    left, right, top, bottom = 64, 20, 20, 44
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="training and eval loss by step" '
            'font-size="12" font-family="sans-serif">'),
           f'<rect width="{width}" height="{height}" fill="#fff"/>']
    for xv in nice_ticks(x0, x1):
        out.append(f'<line x1="{sx(xv):.1f}" y1="{top}" x2="{sx(xv):.1f}" y2="{height - bottom}" stroke="#eee"/>'
                   f'<text x="{sx(xv):.1f}" y="{height - bottom + 16}" text-anchor="middle">{xv:g}</text>')
    for yv in nice_ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{width - right}" y2="{sy(yv):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:g}</text>')
    out.append(f'<path d="M{left},{top} V{height - bottom} H{width - right}" fill="none" stroke="#333"/>'
               f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">step</text>'
               f'<text transform="translate(14,{(top + height - bottom) / 2}) rotate(-90)" '
               'text-anchor="middle">loss</text>')
    for i, ((name, pts), color) in enumerate(zip(curves.items(), COLORS, strict=False)):
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(pts) <= 40:  # sparse curves (eval) are easier to read with their points marked
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        ly = top + 10 + 18 * i
        out.append(f'<line x1="{width - right - 110}" y1="{ly}" x2="{width - right - 86}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="3"/><text x="{width - right - 80}" y="{ly + 4}">{html.escape(name)} loss</text>')
    return "\n".join(out + ["</svg>"])
