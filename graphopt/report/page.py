"""The report as one self-contained HTML page (inline CSS and SVG, no scripts from a CDN)."""

from __future__ import annotations

import math
from typing import Sequence

from .._format import esc, format_bytes, format_change, format_count, format_ms, format_num, format_pct
from .charts import COLORS, hbar_chart

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
    h = "".join(f'<th class="{"l" if i < left or cell_class.get(i) == "stats" else ""}">{esc(c)}</th>'
                for i, c in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{cell_class.get(i, "l" if i < left else "")}" data-label="{esc(headers[i])}">'
            f'{c if raw else esc(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
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
        detail = (f'{esc(v.get("measure", "error"))} {esc(format_num(v.get("error")))} {rel} '
                  f'{esc(format_num(v.get("tolerance")))}')
    elif v.get("reason"):
        detail = esc(v["reason"])
    return f'<span class="{cls}">{esc(status or "–")}</span>', detail


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


def pass_label(p: dict) -> str:
    """A pass record's name on the page: its spec, and "#2", "#3"... for a repeated run."""
    return p["spec"] + (f" #{p['iteration'] + 1}" if p.get("iteration") else "")


def _stage_rows(data: dict) -> list[dict]:
    """The model after each stage: input, then every change that was kept."""
    s = data["summary"]
    stages = [{"label": "input", "nodes": s["nodes_before"], "bytes": s["bytes_before"],
               "profile": data.get("input_stage") or {}}]
    for p in data["passes"]:
        if not p.get("changed") or p.get("reverted"):
            continue
        stages.append({"label": pass_label(p), "nodes": p["nodes_after"], "bytes": p["bytes_after"],
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
        ("nodes", lambda p: (p or {}).get("nodes"), format_count),
        ("parameters", lambda p: ((p or {}).get("params") or {}).get("total"), format_count),
        ("weights", lambda p: ((p or {}).get("params") or {}).get("bytes"), format_bytes),
        ("file size", lambda p: (p or {}).get("file_bytes") or (p or {}).get("serialized_bytes"), format_bytes),
        ("MACs", lambda p: first(p).get("macs"), format_count),
        ("FLOPs", lambda p: first(p).get("flops"), format_count),
        ("activation memory (estimated peak)", act, format_bytes),
        ("session memory (measured peak RSS)", mm, format_bytes),
        ("latency p50", lambda p: lat(p, "p50_ms"), format_ms),
        ("latency p90", lambda p: lat(p, "p90_ms"), format_ms),
        ("latency p99", lambda p: lat(p, "p99_ms"), format_ms),
        ("throughput (samples/s)", lambda p: lat(p, "throughput_per_s"),
         lambda v: "–" if v is None else f"{v:.1f}"),
    ]
    rows = []
    for name, get, fmt in rows_spec:
        a, b = get(pin), get(pout)
        if a is None and b is None:
            continue
        rows.append([name, fmt(a), fmt(b), format_change(a, b)])
    shapes = first(pin).get("input_shapes") or first(pout).get("input_shapes") or {}
    threads = (pin or {}).get("threads") or (pout or {}).get("threads")
    note = "inputs " + ", ".join(f"<code>{esc(k)} {esc('x'.join(map(str, v)))}</code>" for k, v in shapes.items())
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
    from ..graphview import render_graph

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
             f'<p class="muted">Before: {esc(what(b, "removed or rewritten"))}, in red. After: '
             f'{esc(what(a, "new or rewritten"))}, in green. Grey: their unchanged neighbours. '
             'Nodes that compute only from weights (Constant, DequantizeLinear of a weight) are not '
             'drawn. Hover a box for its name.</p><div class="graphs">']
    for side, title, kind in ((b, "before", "removed"), (a, "after", "added")):
        if side["nodes"]:
            parts.append(f"<figure>{render_graph(side, title, kind=kind)}</figure>")
        else:
            parts.append(f'<figure><p class="muted">{title}: no node only on this side</p></figure>')
    parts.append("</div></section>")
    return "".join(parts)


_DECISIONS = ("reverted", "skipped")  # stats keys of a pass that chose not to change the model


def _stats_text(stats: dict) -> str:
    """A pass's scalar stats as key=value; a fusion rule's refusals (`refused` with its
    `reasons` {reason: count}) as "refused 5: needs opset >= 17 (5)"."""
    reasons = stats.get("reasons") if isinstance(stats.get("reasons"), dict) else None
    out = []
    for k, val in stats.items():
        if k == "refused" and reasons:
            out.append(f"refused {format_num(val)}: " + "; ".join(f"{r} ({n})" for r, n in reasons.items()))
        elif not isinstance(val, (dict, list)):
            out.append(f"{k}={format_num(val)}")
    return ", ".join(out)


def render_html(data: dict) -> str:
    """The report as one self-contained HTML page."""
    from .quant import quant_sections  # (it draws with this module's _table)

    s = data["summary"]
    pin = (data.get("profiles") or {}).get("input")
    pout = (data.get("profiles") or {}).get("output")
    stages = _stage_rows(data)
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{esc(data['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(data['title'])}</h1>",
        f'<p class="meta">{esc(data.get("input") or "model")} → {esc(data.get("output") or "–")} · '
        f'pipeline <code>{esc(data.get("pipeline") or "")}</code> · graphopt '
        f'{esc(data.get("graphopt_version", ""))} · {esc(data.get("generated", ""))}</p>',
    ]
    # summary cards: (key, value html, sub-line html)
    ver = data.get("verification") or {}
    verified = [p for p in data["passes"] if (p.get("verify") or {}).get("status")
                in ("ok", "failed")]
    failed = [p for p in verified if p["verify"]["status"] == "failed"]
    cards = [
        ("nodes", esc(f"{s['nodes_before']} → {s['nodes_after']}"), esc(format_change(s["nodes_before"], s["nodes_after"]))),
        ("weights", esc(f"{format_bytes(s['bytes_before'])} → {format_bytes(s['bytes_after'])}"),
         esc(format_change(s["bytes_before"], s["bytes_after"]))),
    ]
    if _first(pin).get("macs") is not None or _first(pout).get("macs") is not None:
        mi, mo = _first(pin).get("macs"), _first(pout).get("macs")
        cards.append(("MACs", esc(f"{format_count(mi)} → {format_count(mo)}"), esc(format_change(mi, mo))))
    lb, la, source = _latency_pair(data, stages)
    if lb.get("p50_ms") is not None or la.get("p50_ms") is not None:
        spread = ""
        if lb.get("p90_ms") is not None or la.get("p90_ms") is not None:
            spread = f"p90 {format_ms(lb.get('p90_ms'))} → {format_ms(la.get('p90_ms'))} · "
        cards.append(("latency p50 (onnxruntime CPU)", esc(f"{format_ms(lb.get('p50_ms'))} → {format_ms(la.get('p50_ms'))}"),
                      esc(f"{format_change(lb.get('p50_ms'), la.get('p50_ms'))} · {spread}{source}")))
    cards.append(("pipeline time", esc(f"{s['seconds']:.2f} s"), ""))
    if ver or verified:
        cls = "fail" if failed else "ok"
        cards.append(("verification", f'<span class="{cls}">{len(verified) - len(failed)}/{len(verified)}'
                                      f" passed</span>", "checked passes that changed the model"))
    else:
        cards.append(("verification", '<span class="muted">off</span>', ""))
    parts.append('<section id="summary"><div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
        + (f'<div class="s">{sub}</div>' if sub else "") + "</div>" for k, v, sub in cards)
        + "</div></section>")
    hints = data.get("hints") or []
    if hints:
        parts.append('<section id="hints"><h2>Hints</h2><ul>' + "".join(
            f'<li class="hint">{esc(h)}</li>' for h in dict.fromkeys(hints)) + "</ul></section>")

    # pipeline: passes that changed (or tried to) first; the unchanged ones folded away
    def row(p: dict) -> list[str]:
        v = p.get("verify")
        status, detail = _verify_cell(v)
        if p.get("reverted"):
            status = '<span class="fail">reverted</span> ' + status
        name = esc(pass_label(p))
        stats = esc(_stats_text(p.get("stats") or {}))
        return [name, esc(p.get("contract", "")), "yes" if p.get("changed") else "–",
                f"{p['nodes_before']} → {p['nodes_after']}" if p.get("changed") else str(p["nodes_after"]),
                esc(format_bytes(p["bytes_after"])), f"{p['seconds'] * 1e3:.0f} ms", status, detail, stats]

    headers = ["pass", "contract", "changed", "nodes", "weights", "time", "check", "worst error", "stats"]
    # a pass that decided against its change (quant keeping a model float because INT8 was
    # not faster, a skipped rewrite) says why in its stats: that decision is shown too
    shown = [p for p in data["passes"] if p.get("changed") or p.get("reverted")
             or (p.get("verify") or {}).get("status") == "failed"
             or any(k in (p.get("stats") or {}) for k in _DECISIONS)]
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
    parts.append(quant_sections(data))  # quant's per-region INT8 decisions (issue 16)

    # verification details
    vrows, vlabels, ratios, rcolors = [], [], [], []
    for p in data["passes"]:
        v = p.get("verify") or {}
        if v.get("status") not in ("ok", "failed", "skipped"):
            continue
        status, detail = _verify_cell(v)
        vrows.append([esc(p["spec"]), esc(v.get("contract", "")), status,
                      esc(format_num(v.get("examples"))), esc(format_num(v.get("samples"))),
                      esc(v.get("worst_output", "")), detail, esc(format_num(v.get("seconds")))])
        m = margin(v)
        if m is not None and not math.isinf(m):
            vlabels.append(p["spec"])
            ratios.append(max(m, 1e-9))
            rcolors.append(COLORS[2] if v.get("status") == "ok" else COLORS[3])
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
                    [k for k, _ in items], [("error", [v for _, v in items])], fmt=format_pct,
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
                             fmt=format_bytes, chart_id="chart-weights", axis_label="bytes of weights"))
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
            f'<li class="note">{esc(n)}</li>' for n in notes) + "</ul></section>")
    parts.append(_MARKER)
    parts.append("</body></html>\n")
    return "".join(parts)
