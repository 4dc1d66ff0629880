"""Plots as inline SVG: the report opens offline, with no script and no CDN.

>>> s = line_chart("t", {"a": [(1, 1.0), (2, 2.0)]}, "x", "y")
>>> s.startswith("<svg") and 'data-plot="t"' in s
True
"""

from __future__ import annotations

import math
from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22")
W, H, L, R, T, B = 640, 360, 70, 170, 36, 48


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0**e for e in range(a, b + 1)]
    if hi == lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2) if start + i * step <= hi + 1e-12]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:g}"


def _frame(plot_id: str, title: str, xlabel: str, ylabel: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-plot="{escape(plot_id)}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>',
        f'<text x="{L}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<text x="{(L + W - R) / 2}" y="{H - 8}" font-size="12" text-anchor="middle">{escape(xlabel)}</text>',
        f'<text x="14" y="{(T + H - B) / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {(T + H - B) / 2})">{escape(ylabel)}</text>',
    ]


def line_chart(
    plot_id: str, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, logx: bool = False, logy: bool = False, title: str = ""
) -> str:
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and (not logy or y > 0) and (not logx or x > 0)]
    out = _frame(plot_id, title or plot_id, xlabel, ylabel)
    if not pts:
        return "\n".join(out + ['<text x="200" y="180">no data</text>', "</svg>"])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(ys), max(ys)) if logy else (0.0, max(ys) * 1.08)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 * 2 if y0 else 1

    def sx(x):
        f = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) if logx else (x - x0) / (x1 - x0)
        return L + f * (W - L - R)

    def sy(y):
        f = (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) if logy else (y - y0) / (y1 - y0)
        return H - B - f * (H - T - B)

    out.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>')
    for v in _ticks(y0, y1, logy):
        if y0 <= v <= y1:
            out.append(
                f'<line x1="{L}" x2="{W - R}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#ddd"/><text x="{L - 4}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{_fmt(v)}</text>'
            )
    for v in _ticks(x0, x1, logx) if logx else sorted(set(xs)):
        if x0 <= v <= x1:
            out.append(f'<text x="{sx(v):.1f}" y="{H - B + 14}" font-size="10" text-anchor="middle">{_fmt(v)}</text>')
    for i, (name, s) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        ok = [(x, y) for x, y in s if y is not None and (not logy or y > 0) and (not logx or x > 0)]
        if not ok:
            continue
        d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(sorted(ok)))
        out.append(f'<path class="series" d="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in ok]
        out.append(
            f'<rect x="{W - R + 10}" y="{T + 16 * i}" width="10" height="10" fill="{c}"/><text x="{W - R + 24}" y="{T + 16 * i + 9}" font-size="11">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(plot_id: str, bars: dict[str, dict[str, float]], ylabel: str, stacked: bool = True, title: str = "", logy: bool = False) -> str:
    """``bars``: ``{bar label: {part: value}}``; parts stack (or sit side by side)."""
    out = _frame(plot_id, title or plot_id, "", ylabel)
    parts = list(dict.fromkeys(p for b in bars.values() for p in b))
    if not bars or not parts:
        return "\n".join(out + ['<text x="200" y="180">no data</text>', "</svg>"])
    tops = [sum(b.values()) if stacked else max(b.values() or [0]) for b in bars.values()]
    vals = [v for b in bars.values() for v in b.values() if v > 0]
    y1 = max(tops) * 1.08 or 1
    y0 = min(vals) / 2 if logy and vals else 0

    def sy(y):
        if logy:
            y = max(y, y0)
            return H - B - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) * (H - T - B)
        return H - B - y / y1 * (H - T - B)

    out.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>')
    for v in _ticks(y0 or 1e-9, y1, logy) if logy else _ticks(0, y1, False):
        if (y0 or 0) <= v <= y1:
            out.append(
                f'<line x1="{L}" x2="{W - R}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#ddd"/><text x="{L - 4}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{_fmt(v)}</text>'
            )
    n = len(bars)
    slot = (W - L - R) / n
    bw = slot * 0.7
    for i, (label, b) in enumerate(bars.items()):
        x = L + i * slot + (slot - bw) / 2
        base = 0.0
        for j, p in enumerate(parts):
            v = b.get(p)
            if v is None or v <= 0:
                continue
            c = COLORS[j % len(COLORS)]
            if stacked:
                y_top, y_bot = sy(base + v), sy(base)
                out.append(
                    f'<rect class="bar" x="{x:.1f}" y="{y_top:.1f}" width="{bw:.1f}" height="{max(y_bot - y_top, 0.5):.1f}" fill="{c}"><title>{escape(f"{label}: {p} {v:.4g}")}</title></rect>'
                )
                base += v
            else:
                w = bw / len(parts)
                out.append(
                    f'<rect class="bar" x="{x + j * w:.1f}" y="{sy(v):.1f}" width="{w:.1f}" height="{max(sy(y0 if logy else 0) - sy(v), 0.5):.1f}" fill="{c}"><title>{escape(f"{label}: {p} {v:.4g}")}</title></rect>'
                )
        out.append(
            f'<text x="{x + bw / 2:.1f}" y="{H - B + 12}" font-size="9" text-anchor="end" transform="rotate(-25 {x + bw / 2:.1f} {H - B + 12})">{escape(label[:28])}</text>'
        )
    for j, p in enumerate(parts):
        out.append(
            f'<rect x="{W - R + 10}" y="{T + 16 * j}" width="10" height="10" fill="{COLORS[j % len(COLORS)]}"/><text x="{W - R + 24}" y="{T + 16 * j + 9}" font-size="11">{escape(p)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
