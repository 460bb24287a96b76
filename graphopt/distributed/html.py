"""The search report: one self-contained HTML page with a latency/accuracy scatter plot
(marker area ~ model size, Pareto trials filled) and every trial's spec and outcome."""

from __future__ import annotations

import html
import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .search import SearchResult


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x, spec: str = ".3g") -> str:
    return "" if x is None else format(x, spec)


def scatter_svg(points: list[dict], input_point: dict, width: int = 640, height: int = 400) -> str:
    """x: speedup over the input model, y: accuracy, area ~ size; `pareto` points filled."""
    pad_l, pad_r, pad_t, pad_b = 60, 20, 20, 45
    allp = points + [input_point]
    xs = [p["x"] for p in allp]
    ys = [p["y"] for p in allp]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.01, y1 + 0.01
    dx, dy = (x1 - x0) * 0.08, (y1 - y0) * 0.08
    x0, x1, y0, y1 = x0 - dx, x1 + dx, y0 - dy, y1 + dy
    smax = max(p["size"] for p in allp) or 1

    def px(x):
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def py(y):
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" '
           f'height="{height - pad_t - pad_b}" fill="none" stroke="#999"/>']
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        yv = y0 + (y1 - y0) * k / 4
        out.append(f'<text x="{px(xv):.1f}" y="{height - pad_b + 14}" text-anchor="middle">{xv:.3g}x</text>')
        out.append(f'<text x="{pad_l - 4}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
    out.append(f'<text x="{(width + pad_l) / 2}" y="{height - 8}" text-anchor="middle">'
               'speedup over the input model (paired, same node)</text>')
    out.append(f'<text x="14" y="{(height - pad_b) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(height - pad_b) / 2})">accuracy</text>')
    for p in allp:
        r = 3 + 9 * math.sqrt(p["size"] / smax)
        fill = "#d33" if p.get("input") else ("#2a6" if p.get("pareto") else "none")
        stroke = "#d33" if p.get("input") else "#2a6"
        out.append(f'<circle cx="{px(p["x"]):.1f}" cy="{py(p["y"]):.1f}" r="{r:.1f}" fill="{fill}" '
                   f'fill-opacity="0.6" stroke="{stroke}"><title>{_e(p["label"])}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def render(result: "SearchResult") -> str:
    pareto = set(result.pareto)
    points = [{"x": t["speedup"], "y": t["accuracy"], "size": t["size_bytes"], "pareto": t["number"] in pareto,
               "label": f"trial {t['number']}: {t['spec']}"}
              for t in result.trials if t["state"] == "complete" and t.get("speedup")]
    inp = result.input
    input_point = {"x": 1.0, "y": inp.get("accuracy", 1.0), "size": inp["size_bytes"], "input": True,
                   "label": "input model"}
    rows = []
    for t in result.trials:
        cls = ' class="pareto"' if t["number"] in pareto else ""
        rows.append(
            f"<tr{cls}><td>{t['number']}</td><td>{_e(t['state'])}{' (Pareto)' if cls else ''}</td>"
            f"<td><code>{_e(t.get('spec'))}</code></td><td>{_fmt(t.get('speedup'), '.3f')}</td>"
            f"<td>{_fmt(t.get('candidate_ms'), '.3f')}</td><td>{_fmt(t.get('baseline_ms'), '.3f')}</td>"
            f"<td>{_fmt(t.get('size_bytes'), ',.0f')}</td><td>{_fmt(t.get('accuracy'), '.4f')}</td>"
            f"<td>{_e(t.get('built_on'))}</td><td>{_e(t.get('measured_on'))}<br><small>{_e(t.get('node_type'))}</small></td>"
            f"<td>{_e(t.get('reason'))}</td></tr>")
    best = "".join(f"<li>{_e(k)}: trial {v['trial']} <code>{_e(v['spec'])}</code> → {_e(os.path.basename(v['path']))}</li>"
                   for k, v in result.best.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>graphopt search: {_e(os.path.basename(inp['path']))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}}tr.pareto{{background:#efe}}
code{{font-size:12px}}</style></head><body>
<h1>graphopt search</h1>
<p>Model <code>{_e(inp['path'])}</code> ({inp['size_bytes']:,} bytes, accuracy {_fmt(inp.get('accuracy'), '.4f')}),
space <code>{_e(result.space)}</code>, study <code>{_e(result.study_name)}</code> in <code>{_e(result.storage)}</code>.</p>
<p>Latency is measured against the input model on the same node, one trial at a time per node; the
speedup is that paired ratio. Absolute times of different node types are not comparable.</p>
{scatter_svg(points, input_point) if points else '<p>No trial completed.</p>'}
<p>Red: the input model. Green: trials (filled: on the Pareto front). Marker area: model size.</p>
<h2>Best per objective</h2><ul>{best}</ul>
<h2>Trials</h2>
<table><tr><th>#</th><th>state</th><th>spec</th><th>speedup</th><th>ms</th><th>input ms</th><th>bytes</th>
<th>accuracy</th><th>built on</th><th>measured on</th><th>reason</th></tr>
{''.join(rows)}</table></body></html>
"""


def write_report(path: str, result: "SearchResult") -> str:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render(result))
    os.replace(tmp, path)
    return path
