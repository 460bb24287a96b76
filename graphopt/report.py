"""Before/after reports of a pipeline run: one self-contained HTML page, or JSON.

    data = build_report(report, input_profile=p_in, output_profile=p_out, spec="clean,fuse")
    write_report("report.html", data)        # or "report.json"

The data is the run's `graphopt.run/1` document (graphopt.schema, docs/json.md) with the
report's parts filled in. The HTML page has no external resources (inline CSS and SVG drawn
here; no scripts from a CDN), so it opens offline or attached to a CI run. What a reader sees
first: summary cards (nodes, weights, MACs, latency p50 with its p90 and the number of runs,
verification), hints (fusions an option would enable), the passes that changed the model
(the unchanged ones folded into one "N passes unchanged" line), and a before/after drawing of
the changed region of the graph (graphopt.graphview). Then verification details with
per-layer errors of lossy passes (``stats["per_layer_error"]``, relative L2 per layer, in %),
the input and output profiles side by side, charts per stage (nodes, weights, latency p50 with
a p90 whisker, MACs) and FLOPs by op type, and notes (each once). Every chart is drawn in a
fixed viewBox and scaled by CSS to its container; tables stack into label/value rows on a
narrow screen. The page writes its own layout check onto <body> (data-rendered,
data-overflow: anything wider than the window), which tests read in headless chromium.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from typing import Any, Callable, Sequence

from .errors import GraphoptError
from .pipeline import Report

# ------------------------------------------------------------------------ formatting


def _count(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _ms(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n:.0f} ms" if n >= 100 else f"{n:.1f} ms" if n >= 10 else f"{n:.3g} ms"


def _num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        return f"{x:.3g}"
    return str(x)


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _change(before: float | None, after: float | None) -> str:
    """The change from `before` to `after`: a signed percent, or a factor past 2x."""
    if not before or after is None:
        return ""
    r = after / before
    if r >= 2:
        return f"×{r:.3g}"
    if r <= 0.5 and r > 0:
        return f"{(r - 1) * 100:.1f}% (÷{1 / r:.3g})"
    pct = (r - 1) * 100
    if abs(pct) < 0.05:
        return "±0%"
    return f"{pct:+.1f}%" if abs(pct) < 10 else f"{pct:+.0f}%"


def _pct(x: float) -> str:
    """A fraction as a percent with sane precision (0.0123 -> 1.23%)."""
    v = x * 100
    if v == 0:
        return "0%"
    if abs(v) >= 10:
        return f"{v:.0f}%"
    if abs(v) >= 0.01:
        return f"{v:.3g}%"
    return f"{v:.1e}%"


# ------------------------------------------------------------------------ data


def build_report(
    report: Report,
    *,
    input_profile=None,
    output_profile=None,
    spec: str = "",
    input_path: str | None = None,
    output_path: str | None = None,
    title: str | None = None,
) -> dict:
    """Everything the report shows: the run's `graphopt.run/1` document (graphopt.schema)
    with the report's parts filled in (title, input and output profiles)."""
    from .schema import run_document

    return run_document(
        report, spec=spec, input_path=input_path, output_path=output_path,
        title=title or f"graphopt report: {os.path.basename(input_path or 'model')}",
        profiles={
            "input": input_profile.as_dict() if input_profile is not None else None,
            "output": output_profile.as_dict() if output_profile is not None else None,
        },
    )


def write_report(path: str | os.PathLike, data: dict) -> str:
    """Write `data` (from build_report) as JSON when the path ends in .json, else HTML."""
    path = os.fspath(path)
    text = json.dumps(data, indent=2) if path.lower().endswith(".json") else render_html(data)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if not text.endswith("\n"):
                f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise GraphoptError(f"cannot write the report to {path}: {e.strerror or e}") from e
    return path


# ------------------------------------------------------------------------ SVG charts

_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")


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
    fmt: Callable[[float], str] = _count,
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
    colors = colors or _COLORS
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
           f'{f"id={chr(34)}{_e(chart_id)}{chr(34)} " if chart_id else ""}'
           f'width="{CHART_W}" height="{height}" viewBox="0 0 {CHART_W} {height}">',
           f'<title>{_e(title)}</title>']
    for k, line in enumerate(tlines):
        out.append(f'<text x="{pad}" y="{16 + k * 15}" class="ctitle">{_e(line)}</text>')
    if n_series > 1:
        x = x0
        for i, (name, _) in enumerate(series):
            out.append(f'<rect x="{x}" y="{top - 16}" width="10" height="10" fill="{colors[i % len(colors)]}"/>'
                       f'<text x="{x + 14}" y="{top - 7}" class="legend">{_e(name)}</text>')
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
                   f'{_e(fmt(tv))}</text>')
    if axis_label:
        out.append(f'<text x="{x0 + plot_w / 2:.1f}" y="{axis_y + 30}" class="tick" '
                   f'text-anchor="middle">{_e(axis_label)}</text>')
    gy = top
    for gi, label in enumerate(labels):
        for k, line in enumerate(wrapped[gi]):
            out.append(f'<text x="{x0}" y="{gy + (k + 1) * line_h - 3}" class="label">{_e(line)}</text>')
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
                       f'fill="{color}"><title>{_e(tip)}</title></rect>')
            out.append(f'<text x="{x0 + end + 4:.1f}" y="{y + bar_h - 4}" class="value">{_e(text)}</text>')
        gy += group_hs[gi]
    if reference is not None and reference > 0:
        xv = x0 + x_of(reference)
        out.append(f'<line x1="{xv:.1f}" y1="{top - 6}" x2="{xv:.1f}" y2="{axis_y}" class="ref"/>'
                   f'<text x="{xv + 3:.1f}" y="{top - 6}" class="reflabel">{_e(reference_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ------------------------------------------------------------------------ HTML

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px;overflow-wrap:anywhere}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}.meta{color:#666;margin:0 0 12px}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0 10px;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #eee;
text-align:right;vertical-align:top;white-space:nowrap;overflow-wrap:normal}th{background:#fafafa;font-weight:600}
td.l,th.l{text-align:left}td.wrap{white-space:normal;min-width:14em}
td.stats{text-align:left;font-size:12px;color:#555;white-space:normal;overflow-wrap:anywhere;min-width:14em;width:40%}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 14px;
min-width:150px;flex:1 1 150px}.card .k{color:#666;font-size:12px}.card .v{font-size:18px;font-weight:600}
.card .s{color:#666;font-size:12px}
.ok{color:#2a7d2a}.fail{color:#c0392b;font-weight:600}.skip{color:#a07000}.muted{color:#888}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,420px),1fr));gap:18px}
figure{margin:0;min-width:0}figcaption{color:#666;font-size:12px}
svg.chart{width:100%;max-width:460px;height:auto;display:block}
svg.chart text{font:11px system-ui,sans-serif;fill:#333}svg.chart .ctitle{font-size:12.5px;font-weight:600}
svg.chart .tick{fill:#777}svg.chart .whisker{stroke:#333;stroke-width:1.2}
svg.chart .axis{stroke:#999}svg.chart .grid{stroke:#eee}svg.chart .ref{stroke:#c0392b;stroke-dasharray:4 3}
svg.chart .reflabel{fill:#c0392b}.note{color:#a07000}.hint{color:#1f5f99}
.graphs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,300px),1fr));gap:18px;align-items:start}
svg.graph{width:100%;height:auto;display:block;margin:0 auto}svg.graph text{font:11px system-ui,sans-serif;text-anchor:middle;fill:#222}
svg.graph .gtitle{font-size:12.5px;font-weight:600;text-anchor:start}svg.graph .edge{fill:none;stroke:#888}
svg.graph .context rect{fill:#f4f4f4;stroke:#bbb}
details>summary{cursor:pointer;color:#555;margin:6px 0}
@media (max-width:700px){
 body{margin:12px auto;padding:0 10px}
 table.stack thead{display:none}table.stack,table.stack tbody,table.stack tr{display:block;width:100%}
 table.stack tr{border-bottom:1px solid #ddd;padding:4px 0}
 table.stack td{display:flex;justify-content:space-between;gap:12px;border:0;padding:2px 4px;text-align:right}
 table.stack td::before{content:attr(data-label);font-weight:600;color:#555;text-align:left;flex:none}
 table.stack td.stats{display:block;text-align:left}table.stack td.stats::before{display:block}
}
"""

# After layout the page writes what a test needs onto <body>: script errors, empty charts,
# and anything wider than the window (horizontal overflow) or scrolling inside a table.
_MARKER = """
<script>
(function(){
  var errors = [];
  window.addEventListener("error", function(e){ errors.push(String(e.message)); });
  window.addEventListener("load", function(){
    var charts = document.querySelectorAll("svg.chart");
    var empty = 0;
    charts.forEach(function(s){ if (!s.querySelector("rect,line") || s.getBBox().width <= 0) empty++; });
    var w = window.innerWidth, wide = [];
    if (document.documentElement.scrollWidth > w) wide.push("page " + document.documentElement.scrollWidth);
    document.querySelectorAll("table,svg,figure,section,.card,pre,code").forEach(function(el){
      var r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > w + 0.5) wide.push((el.id || el.tagName.toLowerCase()) + " " + Math.round(r.right));
      if (el.tagName === "TABLE" && el.scrollWidth > el.clientWidth + 1) wide.push("scrolling " + (el.id || "table"));
    });
    var b = document.body;
    b.setAttribute("data-charts", String(charts.length));
    b.setAttribute("data-graphs", String(document.querySelectorAll("svg.graph").length));
    b.setAttribute("data-tables", String(document.querySelectorAll("table").length));
    b.setAttribute("data-viewport", String(w));
    b.setAttribute("data-overflow", wide.length ? wide.slice(0, 8).join("; ") : "none");
    b.setAttribute("data-rendered",
      errors.length || empty ? "error: " + errors.join("; ") + (empty ? " empty charts: " + empty : "") : "ok");
  });
})();
</script>
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
           table_id: str = "", raw: bool = False, cell_class: dict[int, str] | None = None) -> str:
    """A table that stacks into label: value rows on a narrow screen (class "stack")."""
    cell_class = cell_class or {}
    h = "".join(f'<th class="{"l" if i < left or cell_class.get(i) == "stats" else ""}">{_e(c)}</th>'
                for i, c in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{cell_class.get(i, "l" if i < left else "")}" data-label="{_e(headers[i])}">'
            f'{c if raw else _e(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f'<table class="stack"{ident}><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _verify_cell(v: dict | None) -> tuple[str, str]:
    """(status html, detail html) for one pass."""
    if not v:
        return '<span class="muted">not verified</span>', ""
    status = v.get("status", "")
    cls = {"ok": "ok", "failed": "fail", "skipped": "skip"}.get(status, "muted")
    detail = ""
    if v.get("error") is not None:
        higher_better = v.get("measure") in ("cosine", "top1")
        ok = status == "ok"
        rel = ("≥" if ok else "<") if higher_better else ("≤" if ok else ">")
        detail = (f'{_e(v.get("measure", "error"))} {_e(_num(v.get("error")))} {rel} '
                  f'{_e(_num(v.get("tolerance")))}')
    elif v.get("reason"):
        detail = _e(v["reason"])
    return f'<span class="{cls}">{_e(status or "–")}</span>', detail


def margin(v: dict) -> float | None:
    """How far a check is past its bound (> 1 fails), as the verifier defines it."""
    err, tol = v.get("error"), v.get("tolerance")
    if not isinstance(err, (int, float)) or not isinstance(tol, (int, float)):
        return None
    if v.get("measure") in ("cosine", "top1"):
        return (1 - err) / max(1 - tol, 1e-12)
    if tol <= 0:
        return None
    return err / tol


def _stage_rows(data: dict) -> list[dict]:
    """The model after each stage: input, then every change that was kept."""
    s = data["summary"]
    stages = [{"label": "input", "nodes": s["nodes_before"], "bytes": s["bytes_before"],
               "profile": data.get("input_stage") or {}}]
    for p in data["passes"]:
        if not p.get("changed") or p.get("reverted"):
            continue
        label = p["spec"] + (f" #{p['iteration'] + 1}" if p.get("iteration") else "")
        stages.append({"label": label, "nodes": p["nodes_after"], "bytes": p["bytes_after"],
                       "profile": p.get("profile") or {}})
    return stages


def _profile_side_by_side(pin: dict | None, pout: dict | None) -> str:
    if not pin and not pout:
        return '<p class="muted">No profiles (the models were not profiled).</p>'

    def first(p: dict | None) -> dict:
        return (p or {}).get("batches", [{}])[0] if p and p.get("batches") else {}

    def lat(p: dict | None, key: str):
        lt = first(p).get("latency") or {}
        return lt.get(key)

    def mm(p: dict | None):
        m = (p or {}).get("measured_memory") or {}
        return m.get("session_peak_bytes")

    def act(p):
        return (first(p).get("activation_memory") or {}).get("peak_bytes")

    rows_spec = [
        ("nodes", lambda p: (p or {}).get("nodes"), _count),
        ("parameters", lambda p: ((p or {}).get("params") or {}).get("total"), _count),
        ("weights", lambda p: ((p or {}).get("params") or {}).get("bytes"), _bytes),
        ("file size", lambda p: (p or {}).get("file_bytes") or (p or {}).get("serialized_bytes"), _bytes),
        ("MACs", lambda p: first(p).get("macs"), _count),
        ("FLOPs", lambda p: first(p).get("flops"), _count),
        ("activation memory (estimated peak)", act, _bytes),
        ("session memory (measured peak RSS)", mm, _bytes),
        ("latency p50", lambda p: lat(p, "p50_ms"), _ms),
        ("latency p90", lambda p: lat(p, "p90_ms"), _ms),
        ("latency p99", lambda p: lat(p, "p99_ms"), _ms),
        ("throughput (samples/s)", lambda p: lat(p, "throughput_per_s"),
         lambda v: "–" if v is None else f"{v:.1f}"),
    ]
    rows = []
    for name, get, fmt in rows_spec:
        a, b = get(pin), get(pout)
        if a is None and b is None:
            continue
        rows.append([name, fmt(a), fmt(b), _change(a, b)])
    shapes = first(pin).get("input_shapes") or first(pout).get("input_shapes") or {}
    threads = (pin or {}).get("threads") or (pout or {}).get("threads")
    note = "inputs " + ", ".join(f"<code>{_e(k)} {_e('x'.join(map(str, v)))}</code>" for k, v in shapes.items())
    if threads:
        note += f"; onnxruntime CPU, {threads} intra-op thread(s)"
    runs = (first(pin).get("latency") or {}).get("runs") or (first(pout).get("latency") or {}).get("runs")
    if runs:
        note += (f"; latency here: each saved file on its own, {runs} runs (a separate measurement "
                 "from the per-stage latency of the summary and the chart)")
    note += ("; measured memory is the peak resident set of a fresh process running the session, "
             "above the interpreter's baseline")
    return (_table(["", "input", "output", "change"], rows, table_id="profiles")
            + f'<p class="muted">{note}</p>')


def _first(p: dict | None) -> dict:
    return (p or {}).get("batches", [{}])[0] if p and p.get("batches") else {}


def _latency_pair(data: dict, stages: list[dict]) -> tuple[dict, dict, str]:
    """(before, after, source) latency the card shows, each {p50_ms, p90_ms}: the per-stage
    measurements the latency chart draws when there are any (the first and last stage), else
    the saved files' profiles. One source for card and chart, so they agree."""
    profs = [st["profile"] for st in stages if st["profile"].get("p50_ms") is not None]
    if stages and stages[0]["profile"].get("p50_ms") is not None and profs:
        last = stages[-1]["profile"]
        if last.get("p50_ms") is not None:
            runs = stages[0]["profile"].get("runs")
            return stages[0]["profile"], last, (f"{runs} runs per stage" if runs else "per stage")
    pin = (data.get("profiles") or {}).get("input")
    pout = (data.get("profiles") or {}).get("output")
    lin, lout = (_first(pin).get("latency") or {}), (_first(pout).get("latency") or {})
    runs = lin.get("runs") or lout.get("runs")
    return lin, lout, (f"saved files, {runs} runs each" if runs else "saved files")


def _notes(data: dict, stages: list[dict]) -> list[str]:
    """Every note once; stages that failed to profile for the same reason in one line."""
    pin = (data.get("profiles") or {}).get("input")
    pout = (data.get("profiles") or {}).get("output")
    notes = list(data.get("notes") or [])
    notes += [n for p in (pin, pout) if p for n in p.get("notes", [])]
    unbound = any("not profiled" in n and "--input-shape" in n for n in notes)
    by_error: dict[str, list[str]] = {}
    for st in stages:
        err = st["profile"].get("error")
        if err and not (unbound and "unbound dim" in err):  # said once above
            by_error.setdefault(err, []).append(st["label"])
    for err, labels in by_error.items():
        which = f"stage '{labels[0]}'" if len(labels) == 1 else \
            f"{len(labels)} stages ({', '.join(labels)})"
        notes.append(f"{which} not profiled: {err}")
    return list(dict.fromkeys(notes))


def _graph_section(g: dict | None) -> str:
    from .graphview import render_graph

    if not g:
        return ""
    b, a = g["before"], g["after"]

    def what(side: dict, verb: str) -> str:
        n = side["changed"]
        drawable = side.get("drawn_changed", n)
        notes = []
        if drawable < n:
            notes.append(f"{n - drawable} computing only from weights")
        if side["shown"] < drawable:
            notes.append(f"the first {side['shown']} of the rest drawn")
        return f"{n} of {side['total']} node(s) {verb}" + (f" ({'; '.join(notes)})" if notes else "")

    parts = ['<section id="graph"><h2>What changed in the graph</h2>',
             f'<p class="muted">Before: {_e(what(b, "removed or rewritten"))}, in red. After: '
             f'{_e(what(a, "new or rewritten"))}, in green. Grey: their unchanged neighbours. '
             'Nodes that compute only from weights (Constant, DequantizeLinear of a weight) are not '
             'drawn. Hover a box for its name.</p><div class="graphs">']
    for side, title, kind in ((b, "before", "removed"), (a, "after", "added")):
        if side["nodes"]:
            parts.append(f"<figure>{render_graph(side, title, kind=kind)}</figure>")
        else:
            parts.append(f'<figure><p class="muted">{title}: no node only on this side</p></figure>')
    parts.append("</div></section>")
    return "".join(parts)


def render_html(data: dict) -> str:
    """The report as one self-contained HTML page."""
    s = data["summary"]
    pin = (data.get("profiles") or {}).get("input")
    pout = (data.get("profiles") or {}).get("output")
    stages = _stage_rows(data)
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(data['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(data['title'])}</h1>",
        f'<p class="meta">{_e(data.get("input") or "model")} → {_e(data.get("output") or "–")} · '
        f'pipeline <code>{_e(data.get("pipeline") or "")}</code> · graphopt '
        f'{_e(data.get("graphopt_version", ""))} · {_e(data.get("generated", ""))}</p>',
    ]
    # summary cards: (key, value html, sub-line html)
    ver = data.get("verification") or {}
    verified = [p for p in data["passes"] if (p.get("verify") or {}).get("status")
                in ("ok", "failed")]
    failed = [p for p in verified if p["verify"]["status"] == "failed"]
    cards = [
        ("nodes", _e(f"{s['nodes_before']} → {s['nodes_after']}"), _e(_change(s["nodes_before"], s["nodes_after"]))),
        ("weights", _e(f"{_bytes(s['bytes_before'])} → {_bytes(s['bytes_after'])}"),
         _e(_change(s["bytes_before"], s["bytes_after"]))),
    ]
    if _first(pin).get("macs") is not None or _first(pout).get("macs") is not None:
        mi, mo = _first(pin).get("macs"), _first(pout).get("macs")
        cards.append(("MACs", _e(f"{_count(mi)} → {_count(mo)}"), _e(_change(mi, mo))))
    lb, la, source = _latency_pair(data, stages)
    if lb.get("p50_ms") is not None or la.get("p50_ms") is not None:
        spread = ""
        if lb.get("p90_ms") is not None or la.get("p90_ms") is not None:
            spread = f"p90 {_ms(lb.get('p90_ms'))} → {_ms(la.get('p90_ms'))} · "
        cards.append(("latency p50 (onnxruntime CPU)", _e(f"{_ms(lb.get('p50_ms'))} → {_ms(la.get('p50_ms'))}"),
                      _e(f"{_change(lb.get('p50_ms'), la.get('p50_ms'))} · {spread}{source}")))
    cards.append(("pipeline time", _e(f"{s['seconds']:.2f} s"), ""))
    if ver or verified:
        cls = "fail" if failed else "ok"
        cards.append(("verification", f'<span class="{cls}">{len(verified) - len(failed)}/{len(verified)}'
                                      f" passed</span>", "checked passes that changed the model"))
    else:
        cards.append(("verification", '<span class="muted">off</span>', ""))
    parts.append('<section id="summary"><div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{v}</div>'
        + (f'<div class="s">{sub}</div>' if sub else "") + "</div>" for k, v, sub in cards)
        + "</div></section>")
    hints = data.get("hints") or []
    if hints:
        parts.append('<section id="hints"><h2>Hints</h2><ul>' + "".join(
            f'<li class="hint">{_e(h)}</li>' for h in dict.fromkeys(hints)) + "</ul></section>")

    # pipeline: passes that changed (or tried to) first; the unchanged ones folded away
    def row(p: dict) -> list[str]:
        v = p.get("verify")
        status, detail = _verify_cell(v)
        if p.get("reverted"):
            status = '<span class="fail">reverted</span> ' + status
        name = _e(p["spec"] + (f" #{p['iteration'] + 1}" if p.get("iteration") else ""))
        stats = _e(", ".join(f"{k}={_num(val)}" for k, val in (p.get("stats") or {}).items()
                             if not isinstance(val, (dict, list))))
        return [name, _e(p.get("contract", "")), "yes" if p.get("changed") else "–",
                f"{p['nodes_before']} → {p['nodes_after']}" if p.get("changed") else str(p["nodes_after"]),
                _e(_bytes(p["bytes_after"])), f"{p['seconds'] * 1e3:.0f} ms", status, detail, stats]

    headers = ["pass", "contract", "changed", "nodes", "weights", "time", "check", "worst error", "stats"]
    shown = [p for p in data["passes"] if p.get("changed") or p.get("reverted")
             or (p.get("verify") or {}).get("status") == "failed"]
    folded = [p for p in data["passes"] if p not in shown]
    pipe = ['<section id="pipeline"><h2>Pipeline</h2>']
    if shown:
        pipe.append(_table(headers, [row(p) for p in shown], table_id="passes", raw=True,
                           cell_class={7: "wrap", 8: "stats"}))
    else:
        pipe.append('<p class="muted">No pass changed the model.</p>')
    if folded:
        secs = sum(p["seconds"] for p in folded)
        pipe.append(f'<details id="unchanged"><summary>{len(folded)} passes unchanged '
                    f'({secs * 1e3:.0f} ms in all)</summary>'
                    + _table(headers, [row(p) for p in folded], table_id="passes-unchanged", raw=True,
                             cell_class={7: "wrap", 8: "stats"}) + "</details>")
    pipe.append("</section>")
    parts.extend(pipe)
    parts.append(_graph_section(data.get("graph")))

    # verification details
    vrows, vlabels, ratios, rcolors = [], [], [], []
    for p in data["passes"]:
        v = p.get("verify") or {}
        if v.get("status") not in ("ok", "failed", "skipped"):
            continue
        status, detail = _verify_cell(v)
        vrows.append([_e(p["spec"]), _e(v.get("contract", "")), status,
                      _e(_num(v.get("examples"))), _e(_num(v.get("samples"))),
                      _e(v.get("worst_output", "")), detail, _e(_num(v.get("seconds")))])
        m = margin(v)
        if m is not None and not math.isinf(m):
            vlabels.append(p["spec"])
            ratios.append(max(m, 1e-9))
            rcolors.append(_COLORS[2] if v.get("status") == "ok" else _COLORS[3])
    vhtml = ['<section id="verification"><h2>Verification</h2>']
    vcharts = []
    if vrows:
        vhtml.append(_table(["pass", "contract", "result", "examples", "real samples", "worst output",
                             "worst error vs tolerance", "seconds"], vrows, table_id="verify", raw=True,
                            cell_class={5: "wrap", 6: "wrap"}))
        if ratios:
            vcharts.append(hbar_chart(
                "worst error ÷ tolerance per verified pass (≤ 1 passes)", vlabels,
                [("error/tolerance", ratios)], fmt=lambda x: f"{x:.2g}", log_scale=True,
                reference=1.0, reference_label="tolerance", bar_colors=rcolors,
                chart_id="chart-verify", axis_label="ratio, log scale"))
    elif ver:
        vhtml.append('<p class="muted">No pass changed the model, so nothing needed checking.</p>')
    else:
        vhtml.append('<p class="muted">Verification was off for this run.</p>')
    # per-layer errors of lossy passes (relative L2 of each layer's output)
    for p in data["passes"]:
        layers = (p.get("stats") or {}).get("per_layer_error") or \
            (p.get("verify") or {}).get("per_layer")
        if isinstance(layers, dict) and layers:
            items = sorted(((str(k), float(v)) for k, v in layers.items()
                            if isinstance(v, (int, float))), key=lambda kv: -kv[1])[:30]
            if items:
                vcharts.append(hbar_chart(
                    f"per-layer error after {p['spec']}: relative L2 error of each layer's output (%)",
                    [k for k, _ in items], [("error", [v for _, v in items])], fmt=_pct,
                    chart_id=f"chart-layers-{len(vcharts)}", axis_label="relative L2 error, percent"))
    if vcharts:
        vhtml.append('<div class="charts">' + "".join(f"<figure>{c}</figure>" for c in vcharts) + "</div>")
    vhtml.append("</section>")
    parts.extend(vhtml)

    # profiles side by side
    parts.append('<section id="profile"><h2>Profile: input vs output</h2>'
                 + _profile_side_by_side(pin, pout) + "</section>")

    # charts
    charts = []
    labels = [st["label"] for st in stages]
    charts.append(hbar_chart("nodes per stage (count)", labels, [("nodes", [st["nodes"] for st in stages])],
                             chart_id="chart-nodes", axis_label="nodes"))
    charts.append(hbar_chart("weights per stage (bytes)", labels,
                             [("weights", [st["bytes"] for st in stages])],
                             fmt=_bytes, chart_id="chart-weights", axis_label="bytes of weights"))
    lat = [st["profile"].get("p50_ms") for st in stages]
    if any(v is not None for v in lat):
        charts.append(hbar_chart(
            f"latency per stage (ms, onnxruntime CPU, {source}): bar p50, whisker to p90", labels,
            [("p50", lat)], fmt=lambda x: f"{x:.3g} ms", chart_id="chart-latency",
            whiskers=[st["profile"].get("p90_ms") for st in stages], whisker_label="p90",
            axis_label="milliseconds per inference"))
    macs = [st["profile"].get("macs") for st in stages]
    if any(v is not None for v in macs) and len(set(v for v in macs if v is not None)) > 1:
        charts.append(hbar_chart("MACs per stage (multiply-accumulates per inference)", labels,
                                 [("MACs", macs)], chart_id="chart-macs", axis_label="MACs"))
    ops_in = ((_first(pin).get("counts") or {}).get("per_op_type")) or {}
    ops_out = ((_first(pout).get("counts") or {}).get("per_op_type")) or {}
    if ops_in or ops_out:
        names = sorted(set(ops_in) | set(ops_out),
                       key=lambda k: -max((ops_in.get(k) or {}).get("flops", 0),
                                          (ops_out.get(k) or {}).get("flops", 0)))
        names = [k for k in names if max((ops_in.get(k) or {}).get("flops", 0),
                                         (ops_out.get(k) or {}).get("flops", 0)) > 0][:14]
        if names:
            series = []
            if ops_in:
                series.append(("input", [(ops_in.get(k) or {}).get("flops") for k in names]))
            if ops_out:
                series.append(("output", [(ops_out.get(k) or {}).get("flops") for k in names]))
            charts.append(hbar_chart("FLOPs by op type (floating-point operations per inference)",
                                     names, series, log_scale=True, chart_id="chart-flops",
                                     axis_label="FLOPs, log scale"))
    parts.append('<section id="charts"><h2>Charts</h2><div class="charts">'
                 + "".join(f"<figure>{c}</figure>" for c in charts) + "</div></section>")
    notes = _notes(data, stages)
    if notes:
        parts.append('<section id="notes"><h2>Notes</h2><ul>' + "".join(
            f'<li class="note">{_e(n)}</li>' for n in notes) + "</ul></section>")
    parts.append(_MARKER)
    parts.append("</body></html>\n")
    return "".join(parts)


# ------------------------------------------------------------------------ one call for the CLI


def unbound_inputs_note(proto, input_shapes=None) -> str:
    """'' when every input's shape is known once leading dims are bound to 1; else one note
    naming the inputs, their unbound dims and the `graphopt` option that binds them."""
    from .analysis.shapes import resolve_input_shapes

    try:
        bound, _ = resolve_input_shapes(proto, input_shapes, batch=1)
    except GraphoptError as e:
        return f"the models were not profiled: {e}"
    missing = {k: v for k, v in bound.items() if v is None or not all(isinstance(d, int) for d in v)}
    if not missing:
        return ""

    def example(v) -> str:
        return "x".join(str(d) if isinstance(d, int) else "N" for d in (v or ("N",)))

    what = "; ".join(
        f"input '{k}' has shape " + ("unknown" if v is None else "[" + ", ".join(map(str, v)) + "]")
        for k, v in missing.items())
    opts = " ".join(f"--input-shape {k}={example(v)}" for k, v in missing.items())
    return (f"the models were not profiled (no FLOPs, latency or memory): {what}, with dims "
            f"graphopt cannot guess; give them, e.g. {opts} (N: the size you run with)")


def profile_path(path: str, input_shapes=None, *, progress=None, runs: int = 20,
                 measure_memory: bool = True, proto=None):
    """Profile a saved model for a report: leading symbolic dims bound to 1. Returns
    (Profile or None, note)."""
    from . import io
    from .analysis import profile_model
    from .analysis.stages import report_shapes

    try:
        proto = proto if proto is not None else io.load(path)
        shapes = report_shapes(proto, input_shapes)
        return profile_model(proto, name=os.path.basename(path), path=path, input_shapes=shapes,
                             runs=runs, measure_memory=measure_memory, progress=progress), ""
    except GraphoptError as e:
        return None, f"{os.path.basename(path)} was not profiled: {e}"


def _load_structure(path: str):
    """The model's graph without external weights (for the graph view and hints)."""
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:  # a report never fails the run over its pictures
        logging.getLogger(__name__).info("report: cannot read %s: %s", path, e)
        return None


def report_for_run(
    out_path: str | os.PathLike, report: Report, *, input_path: str, output_path: str, spec: str,
    input_shapes=None, progress=None, runs: int = 20, measure_memory: bool = True, ctx=None,
) -> str:
    """Profile the input and output models of a run and write the report (HTML or JSON):
    the run's document (graphopt.schema) with profiles, the changed region of the graph,
    hints (when the run's instruments left none) and notes."""
    from .analysis.hints import fusion_hints
    from .graphview import graph_diff
    from .schema import plain

    before, after = _load_structure(input_path), _load_structure(output_path)
    unbound = unbound_inputs_note(before, input_shapes) if before is not None else ""
    graph = hints = None
    if before is not None and after is not None:
        graph = plain(graph_diff(before, after))
        if "hints" not in report.extra:  # FusionHints did not run (it knows the context)
            hints = fusion_hints(after, ctx, {r.name for r in report.records})
    del before, after  # the profiles load the models again, with their external data
    p_in = p_out = None
    notes = []
    if unbound:
        notes.append(unbound)
    else:
        p_in, note_in = profile_path(input_path, input_shapes, progress=progress, runs=runs,
                                     measure_memory=measure_memory)
        p_out, note_out = profile_path(output_path, input_shapes, progress=progress, runs=runs,
                                       measure_memory=measure_memory)
        notes += [n for n in (note_in, note_out) if n]
    data = build_report(report, input_profile=p_in, output_profile=p_out, spec=spec,
                        input_path=input_path, output_path=output_path)
    data["notes"] = notes
    data["graph"] = graph
    if hints is not None:
        data["hints"] = hints
    return write_report(out_path, data)
