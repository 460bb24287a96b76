"""Bar charts as inline SVG, drawn in a fixed viewBox and scaled by CSS to their container."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .._format import esc, format_count

COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")


CHART_W = 460  # viewBox width of every bar chart; CSS scales it to its container


def _wrap(label: str, width: int, max_lines: int = 3) -> list[str]:
    """Split a label into lines of at most `width` characters, preferring to break after
    / . _ : - or a space; the last line is clipped (the full label is in the tooltip)."""
    lines: list[str] = []
    rest = label
    while rest and len(lines) < max_lines:
        if len(rest) <= width:
            lines.append(rest)
            rest = ""
            break
        cut = max((rest.rfind(c, 0, width) for c in "/._:- "), default=-1)
        cut = cut + 1 if cut >= width // 3 else width
        lines.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        lines[-1] = _clip(lines[-1] + rest, width)
    return lines or [""]


def hbar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    fmt: Callable[[float], str] = format_count,
    *,
    log_scale: bool = False,
    reference: float | None = None,
    reference_label: str = "",
    colors: Sequence[str] | None = None,
    bar_colors: Sequence[str] | None = None,
    chart_id: str = "",
    whiskers: Sequence[float | None] | None = None,
    whisker_label: str = "",
    axis_label: str = "",
) -> str:
    """A horizontal (grouped) bar chart as inline SVG, CHART_W wide in its viewBox (the page
    scales it to fit). Each label sits above its bars, wrapped, never cut short (up to three
    lines; the whole label is in the bar's tooltip). Missing values are skipped. `whiskers`
    (one per label, first series) draws a line from the bar's end to that value, e.g. p90
    beside a p50 bar. `axis_label` names the unit under the axis."""
    colors = colors or COLORS
    n_series = max(1, len(series))
    bar_h = 13 if n_series > 1 else 16
    line_h = 14
    pad = 4
    value_w = 118 if whiskers else 84
    plot_w = CHART_W - 2 * pad - value_w
    chars = int((CHART_W - 2 * pad) / 6.3)
    wrapped = [_wrap(str(lb), chars) for lb in labels]
    tlines = _wrap(title, int(CHART_W / 7.4), 2)
    top = 30 + 15 * (len(tlines) - 1) + (18 if n_series > 1 else 0)
    group_hs = [len(w) * line_h + bar_h * n_series + 10 for w in wrapped]
    axis_y = top + sum(group_hs)
    height = axis_y + 22 + (14 if axis_label else 0)
    values = [v for _, vals in series for v in vals if v is not None and v > 0]
    values += [w for w in (whiskers or ()) if w is not None and w > 0]
    if reference is not None and reference > 0:
        values.append(reference)
    vmax = max(values, default=1.0)
    vmin = min(values, default=1.0)
    if log_scale:
        lo = 10 ** (math.floor(math.log10(vmin)) - 1) if vmin > 0 else 1e-12
        hi = 10 ** math.ceil(math.log10(vmax)) if vmax > 0 else 1.0
        if hi <= lo:
            hi = lo * 10

        def x_of(v: float) -> float:
            v = max(v, lo)
            return plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    else:
        def x_of(v: float) -> float:
            return plot_w * v / vmax if vmax > 0 else 0.0

    x0 = pad
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'{f"id={chr(34)}{esc(chart_id)}{chr(34)} " if chart_id else ""}'
           f'width="{CHART_W}" height="{height}" viewBox="0 0 {CHART_W} {height}">',
           f'<title>{esc(title)}</title>']
    for k, line in enumerate(tlines):
        out.append(f'<text x="{pad}" y="{16 + k * 15}" class="ctitle">{esc(line)}</text>')
    if n_series > 1:
        x = x0
        for i, (name, _) in enumerate(series):
            out.append(f'<rect x="{x}" y="{top - 16}" width="10" height="10" fill="{colors[i % len(colors)]}"/>'
                       f'<text x="{x + 14}" y="{top - 7}" class="legend">{esc(name)}</text>')
            x += 24 + 7 * len(name)
    out.append(f'<line x1="{x0}" y1="{top - 4}" x2="{x0}" y2="{axis_y}" class="axis"/>')
    ticks = []
    if log_scale:
        decade = math.log10(lo)
        while decade <= math.log10(hi) + 1e-9:
            ticks.append(10 ** decade)
            decade += 1
        if len(ticks) > 5:  # every other decade on a long axis
            ticks = ticks[::2]
    else:
        ticks = [vmax * 0.5, vmax]
    for tv in ticks:
        xv = x0 + x_of(tv)
        anchor = "end" if xv > x0 + plot_w - 20 else "middle"
        out.append(f'<line x1="{xv:.1f}" y1="{top - 4}" x2="{xv:.1f}" y2="{axis_y}" class="grid"/>'
                   f'<text x="{xv:.1f}" y="{axis_y + 14}" class="tick" text-anchor="{anchor}">'
                   f'{esc(fmt(tv))}</text>')
    if axis_label:
        out.append(f'<text x="{x0 + plot_w / 2:.1f}" y="{axis_y + 30}" class="tick" '
                   f'text-anchor="middle">{esc(axis_label)}</text>')
    gy = top
    for gi, label in enumerate(labels):
        for k, line in enumerate(wrapped[gi]):
            out.append(f'<text x="{x0}" y="{gy + (k + 1) * line_h - 3}" class="label">{esc(line)}</text>')
        by = gy + len(wrapped[gi]) * line_h + 2
        for si, (name, vals) in enumerate(series):
            v = vals[gi] if gi < len(vals) else None
            if v is None:
                continue
            y = by + si * bar_h
            w = max(1.0, x_of(v)) if v > 0 else 0.0
            color = (bar_colors[gi] if bar_colors and gi < len(bar_colors) else colors[si % len(colors)])
            tip = f"{label} {name}: {fmt(v)}"
            text = fmt(v)
            end = w
            if si == 0 and whiskers and gi < len(whiskers) and whiskers[gi] is not None:
                wx = max(w, x_of(whiskers[gi]))
                cy = y + (bar_h - 2) / 2
                out.append(f'<line class="whisker" x1="{x0 + w:.1f}" y1="{cy:.1f}" x2="{x0 + wx:.1f}" '
                           f'y2="{cy:.1f}"/><line class="whisker" x1="{x0 + wx:.1f}" y1="{y + 2}" '
                           f'x2="{x0 + wx:.1f}" y2="{y + bar_h - 4}"/>')
                tip += f", {whisker_label} {fmt(whiskers[gi])}"
                text += f" ({whisker_label} {fmt(whiskers[gi])})"
                end = wx
            out.append(f'<rect class="bar" x="{x0}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                       f'fill="{color}"><title>{esc(tip)}</title></rect>')
            out.append(f'<text x="{x0 + end + 4:.1f}" y="{y + bar_h - 4}" class="value">{esc(text)}</text>')
        gy += group_hs[gi]
    if reference is not None and reference > 0:
        xv = x0 + x_of(reference)
        out.append(f'<line x1="{xv:.1f}" y1="{top - 6}" x2="{xv:.1f}" y2="{axis_y}" class="ref"/>'
                   f'<text x="{xv + 3:.1f}" y="{top - 6}" class="reflabel">{esc(reference_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
