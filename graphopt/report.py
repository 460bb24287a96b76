"""Before/after reports of a pipeline run: one self-contained HTML page, or JSON.

    data = build_report(report, input_profile=p_in, output_profile=p_out, spec="clean,fuse")
    write_report("report.html", data)        # or "report.json"

The HTML page has no external resources (inline CSS and SVG charts drawn here; no
scripts from a CDN), so it can be opened offline or attached to a CI run. It shows the
pipeline (per-pass nodes, weight size, time), the verification results the verify
instrument left in each `PassRecord.extra["verify"]` (absent when verification was off),
the input and output profiles side by side, and charts: nodes, weights and latency per
stage (stage latency needs `graphopt.analysis.stages.StageProfiler`), verification error
against tolerance, per-layer error of lossy passes (when a pass reports
``stats["per_layer_error"]`` or ``extra["verify"]["per_layer"]`` as {layer: error}), and
FLOPs by op type before and after.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
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
    return "–" if n is None else f"{n:.2f} ms"


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
    if not before or after is None:
        return ""
    r = after / before
    return f"×{r:.3g}" if r >= 0.01 else f"×{r:.1e}"


# ------------------------------------------------------------------------ data


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return _json_safe(x.item())
        if isinstance(x, np.ndarray):
            return _json_safe(x.tolist())
    except ImportError:  # pragma: no cover
        pass
    return str(x)


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
    """A JSON-ready dict of everything the report shows."""
    from . import __version__

    passes = []
    for r in report.records:
        d = r.as_dict()
        passes.append(d)
    data = {
        "title": title or f"graphopt report: {os.path.basename(input_path or 'model')}",
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "graphopt_version": __version__,
        "pipeline": spec,
        "input": input_path,
        "output": output_path,
        "summary": {
            "nodes_before": report.nodes_before, "nodes_after": report.nodes_after,
            "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
            "seconds": report.seconds,
        },
        "passes": passes,
        "verification": report.extra.get("verify"),
        "input_stage": report.extra.get("input_profile"),
        "profiles": {
            "input": input_profile.as_dict() if input_profile is not None else None,
            "output": output_profile.as_dict() if output_profile is not None else None,
        },
    }
    return _json_safe(data)


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
) -> str:
    """A horizontal (grouped) bar chart as inline SVG. Missing values are skipped."""
    colors = colors or _COLORS
    n_series = max(1, len(series))
    bar_h = 14 if n_series > 1 else 18
    group_h = bar_h * n_series + 8
    label_w = min(260, 12 + 7 * max((len(str(lb)) for lb in labels), default=4))
    plot_w = 420
    value_w = 90
    top = 34 + (18 if n_series > 1 else 0)
    height = top + group_h * len(labels) + 26
    width = label_w + plot_w + value_w
    values = [v for _, vals in series for v in vals if v is not None and v > 0]
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

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'{f"id={chr(34)}{_e(chart_id)}{chr(34)} " if chart_id else ""}'
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<title>{_e(title)}</title>',
           f'<text x="4" y="18" class="ctitle">{_e(title)}</text>']
    if n_series > 1:
        x = label_w
        for i, (name, _) in enumerate(series):
            out.append(f'<rect x="{x}" y="28" width="10" height="10" fill="{colors[i % len(colors)]}"/>'
                       f'<text x="{x + 14}" y="37" class="legend">{_e(name)}</text>')
            x += 24 + 7 * len(name)
    # axis
    axis_y = top + group_h * len(labels)
    out.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{axis_y}" class="axis"/>')
    if log_scale:
        decade = math.log10(lo)
        while decade <= math.log10(hi) + 1e-9:
            xv = label_w + x_of(10 ** decade)
            out.append(f'<line x1="{xv:.1f}" y1="{top - 4}" x2="{xv:.1f}" y2="{axis_y}" class="grid"/>'
                       f'<text x="{xv:.1f}" y="{axis_y + 14}" class="tick">{_e(fmt(10 ** decade))}</text>')
            decade += 1
    else:
        for frac in (0.5, 1.0):
            xv = label_w + plot_w * frac
            out.append(f'<line x1="{xv:.1f}" y1="{top - 4}" x2="{xv:.1f}" y2="{axis_y}" class="grid"/>'
                       f'<text x="{xv:.1f}" y="{axis_y + 14}" class="tick">{_e(fmt(vmax * frac))}</text>')
    for gi, label in enumerate(labels):
        gy = top + gi * group_h
        out.append(f'<text x="{label_w - 6}" y="{gy + group_h / 2 + 2:.1f}" class="label">'
                   f'{_e(_clip(str(label), 36))}</text>')
        for si, (name, vals) in enumerate(series):
            v = vals[gi] if gi < len(vals) else None
            if v is None:
                continue
            y = gy + 4 + si * bar_h
            w = max(1.0, x_of(v)) if v > 0 else 0.0
            color = (bar_colors[gi] if bar_colors and gi < len(bar_colors) else colors[si % len(colors)])
            out.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                       f'fill="{color}"><title>{_e(label)} {_e(name)}: {_e(fmt(v))}</title></rect>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 4}" class="value">'
                       f'{_e(fmt(v))}</text>')
    if reference is not None and reference > 0:
        xv = label_w + x_of(reference)
        out.append(f'<line x1="{xv:.1f}" y1="{top - 6}" x2="{xv:.1f}" y2="{axis_y}" class="ref"/>'
                   f'<text x="{xv + 3:.1f}" y="{top - 8}" class="reflabel">{_e(reference_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ------------------------------------------------------------------------ HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}.meta{color:#666;margin:0 0 12px}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0 10px;display:block;overflow-x:auto;max-width:100%}th,td{padding:4px 10px;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap}th{background:#fafafa;font-weight:600}td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 14px;
min-width:150px}.card .k{color:#666;font-size:12px}.card .v{font-size:18px;font-weight:600}
.ok{color:#2a7d2a}.fail{color:#c0392b;font-weight:600}.skip{color:#a07000}.muted{color:#888}
.charts{display:flex;flex-wrap:wrap;gap:18px}figure{margin:0}
svg.chart text{font:11px system-ui,sans-serif;fill:#333}svg.chart .ctitle{font-size:13px;font-weight:600}
svg.chart .label{text-anchor:end}svg.chart .tick{text-anchor:middle;fill:#777}
svg.chart .axis{stroke:#999}svg.chart .grid{stroke:#eee}svg.chart .ref{stroke:#c0392b;stroke-dasharray:4 3}
svg.chart .reflabel{fill:#c0392b}#passes td:last-child{white-space:normal;min-width:220px}.note{color:#a07000}
"""

_MARKER = """
<script>
(function(){
  var errors = [];
  window.addEventListener("error", function(e){ errors.push(String(e.message)); });
  window.addEventListener("load", function(){
    var charts = document.querySelectorAll("svg.chart");
    var empty = 0;
    charts.forEach(function(s){ if (!s.querySelector("rect,line") || s.getBBox().width <= 0) empty++; });
    document.body.setAttribute("data-charts", String(charts.length));
    document.body.setAttribute("data-tables", String(document.querySelectorAll("table").length));
    document.body.setAttribute("data-rendered",
      errors.length || empty ? "error: " + errors.join("; ") + (empty ? " empty charts: " + empty : "") : "ok");
  });
})();
</script>
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
           table_id: str = "", raw: bool = False) -> str:
    h = "".join(f'<th class="{"l" if i < left else ""}">{_e(c)}</th>' for i, c in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"l" if i < left else ""}">{c if raw else _e(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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
                       "profile": (p.get("extra") or {}).get("profile") or {}})
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
    note += ("; measured memory is the peak resident set of a fresh process running the session, "
             "above the interpreter's baseline")
    return (_table(["", "input", "output", "change"], rows, table_id="profiles")
            + f'<p class="muted">{note}</p>')


def render_html(data: dict) -> str:
    """The report as one self-contained HTML page."""
    s = data["summary"]
    pin = (data.get("profiles") or {}).get("input")
    pout = (data.get("profiles") or {}).get("output")
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_e(data['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(data['title'])}</h1>",
        f'<p class="meta">{_e(data.get("input") or "model")} → {_e(data.get("output") or "–")} · '
        f'pipeline <code>{_e(data.get("pipeline") or "")}</code> · graphopt '
        f'{_e(data.get("graphopt_version", ""))} · {_e(data.get("generated", ""))}</p>',
    ]
    # summary cards
    ver = data.get("verification") or {}
    verified = [p for p in data["passes"] if (p.get("extra") or {}).get("verify", {}).get("status")
                in ("ok", "failed")]
    failed = [p for p in verified if p["extra"]["verify"]["status"] == "failed"]
    cards = [
        ("nodes", f"{s['nodes_before']} → {s['nodes_after']}"),
        ("weights", f"{_bytes(s['bytes_before'])} → {_bytes(s['bytes_after'])}"),
        ("pipeline time", f"{s['seconds']:.2f} s"),
    ]

    def first(p):
        return (p or {}).get("batches", [{}])[0] if p and p.get("batches") else {}

    if first(pin).get("macs") is not None or first(pout).get("macs") is not None:
        cards.append(("MACs", f"{_count(first(pin).get('macs'))} → {_count(first(pout).get('macs'))}"))
    lin, lout = (first(pin).get("latency") or {}), (first(pout).get("latency") or {})
    if lin or lout:
        cards.append(("latency p50", f"{_ms(lin.get('p50_ms'))} → {_ms(lout.get('p50_ms'))}"))
    if ver or verified:
        cls = "fail" if failed else "ok"
        cards.append(("verification", f'<span class="{cls}">{len(verified) - len(failed)}/{len(verified)}'
                                      f" passed</span>"))
    else:
        cards.append(("verification", '<span class="muted">off</span>'))
    parts.append('<section id="summary"><div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">'
        f'{v if k == "verification" else _e(v)}</div></div>' for k, v in cards) + "</div></section>")

    # pipeline
    rows = []
    for p in data["passes"]:
        v = (p.get("extra") or {}).get("verify")
        status, detail = _verify_cell(v)
        if p.get("reverted"):
            status = '<span class="fail">reverted</span> ' + status
        name = _e(p["spec"] + (f" #{p['iteration'] + 1}" if p.get("iteration") else ""))
        stats = _e(", ".join(f"{k}={_num(val)}" for k, val in (p.get("stats") or {}).items()
                             if not isinstance(val, (dict, list))))
        rows.append([
            name, _e(p.get("contract", "")), "yes" if p.get("changed") else "–",
            f"{p['nodes_before']} → {p['nodes_after']}" if p.get("changed") else str(p["nodes_after"]),
            _e(_bytes(p["bytes_after"])), f"{p['seconds'] * 1e3:.0f} ms", status, detail,
            f'<span class="muted" title="{stats}">{_e(_clip(html.unescape(stats), 48))}</span>',
        ])
    parts.append('<section id="pipeline"><h2>Pipeline</h2>' + _table(
        ["pass", "contract", "changed", "nodes", "weights", "time", "check", "worst error", "stats"],
        rows, left=1, table_id="passes", raw=True) + "</section>")

    # verification details
    vrows, vlabels, ratios, rcolors = [], [], [], []
    for p in data["passes"]:
        v = (p.get("extra") or {}).get("verify") or {}
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
    if vrows:
        vhtml.append(_table(["pass", "contract", "result", "examples", "real samples", "worst output",
                             "worst error vs tolerance", "seconds"], vrows, table_id="verify", raw=True))
        if ratios:
            vhtml.append('<div class="charts"><figure>' + hbar_chart(
                "distance to the error bound per verified pass (≤ 1 passes)", vlabels,
                [("error/tolerance", ratios)], fmt=lambda x: f"{x:.3g}", log_scale=True,
                reference=1.0, reference_label="tolerance", bar_colors=rcolors,
                chart_id="chart-verify") + "</figure></div>")
    elif ver:
        vhtml.append('<p class="muted">No pass changed the model, so nothing needed checking.</p>')
    else:
        vhtml.append('<p class="muted">Verification was off for this run.</p>')
    # per-layer errors of lossy passes
    for p in data["passes"]:
        layers = (p.get("stats") or {}).get("per_layer_error") or \
            ((p.get("extra") or {}).get("verify") or {}).get("per_layer")
        if isinstance(layers, dict) and layers:
            items = sorted(((str(k), float(v)) for k, v in layers.items()
                            if isinstance(v, (int, float))), key=lambda kv: -kv[1])[:30]
            if items:
                vhtml.append('<figure>' + hbar_chart(
                    f"per-layer error: {p['spec']}", [k for k, _ in items],
                    [("error", [v for _, v in items])], fmt=lambda x: f"{x:.2g}",
                    chart_id=f"chart-layers-{len(vhtml)}") + "</figure>")
    vhtml.append("</section>")
    parts.extend(vhtml)

    # profiles side by side
    parts.append('<section id="profile"><h2>Profile: input vs output</h2>'
                 + _profile_side_by_side(pin, pout) + "</section>")

    # charts
    charts = []
    stages = _stage_rows(data)
    labels = [st["label"] for st in stages]
    charts.append(hbar_chart("nodes per stage", labels, [("nodes", [st["nodes"] for st in stages])],
                             chart_id="chart-nodes"))
    charts.append(hbar_chart("weights per stage", labels, [("weights", [st["bytes"] for st in stages])],
                             fmt=_bytes, chart_id="chart-weights"))
    lat = [st["profile"].get("p50_ms") for st in stages]
    if any(v is not None for v in lat):
        charts.append(hbar_chart("latency p50 per stage (onnxruntime)", labels, [("p50 ms", lat)],
                                 fmt=lambda x: f"{x:.2f} ms", chart_id="chart-latency"))
    macs = [st["profile"].get("macs") for st in stages]
    if any(v is not None for v in macs) and len(set(v for v in macs if v is not None)) > 1:
        charts.append(hbar_chart("MACs per stage", labels, [("MACs", macs)], chart_id="chart-macs"))
    ops_in = ((first(pin).get("counts") or {}).get("per_op_type")) or {}
    ops_out = ((first(pout).get("counts") or {}).get("per_op_type")) or {}
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
            charts.append(hbar_chart("FLOPs by op type", names, series, log_scale=True,
                                     chart_id="chart-flops"))
    parts.append('<section id="charts"><h2>Charts</h2><div class="charts">'
                 + "".join(f"<figure>{c}</figure>" for c in charts) + "</div></section>")
    notes = list(data.get("notes") or [])
    notes += [n for p in (pin, pout) if p for n in p.get("notes", [])]
    for st in stages:
        if st["profile"].get("error"):
            notes.append(f"stage '{st['label']}' was not profiled: {st['profile']['error']}")
    if notes:
        parts.append('<section id="notes"><h2>Notes</h2><ul>' + "".join(
            f'<li class="note">{_e(n)}</li>' for n in dict.fromkeys(notes)) + "</ul></section>")
    parts.append(_MARKER)
    parts.append("</body></html>\n")
    return "".join(parts)


# ------------------------------------------------------------------------ one call for the CLI


def profile_path(path: str, input_shapes=None, *, progress=None, runs: int = 20,
                 measure_memory: bool = True):
    """Profile a saved model for a report: leading symbolic dims bound to 1. Returns
    (Profile or None, note)."""
    from . import io
    from .analysis import profile_model
    from .analysis.stages import report_shapes

    try:
        proto = io.load(path)
        shapes = report_shapes(proto, input_shapes)
        return profile_model(proto, name=os.path.basename(path), path=path, input_shapes=shapes,
                             runs=runs, measure_memory=measure_memory, progress=progress), ""
    except GraphoptError as e:
        return None, f"{os.path.basename(path)} was not profiled: {e}"


def report_for_run(
    out_path: str | os.PathLike, report: Report, *, input_path: str, output_path: str, spec: str,
    input_shapes=None, progress=None, runs: int = 20, measure_memory: bool = True,
) -> str:
    """Profile the input and output models of a run and write the report (HTML or JSON)."""
    p_in, note_in = profile_path(input_path, input_shapes, progress=progress, runs=runs,
                                 measure_memory=measure_memory)
    p_out, note_out = profile_path(output_path, input_shapes, progress=progress, runs=runs,
                                   measure_memory=measure_memory)
    data = build_report(report, input_profile=p_in, output_profile=p_out, spec=spec,
                        input_path=input_path, output_path=output_path)
    data["notes"] = [n for n in (note_in, note_out) if n]
    return write_report(out_path, data)
