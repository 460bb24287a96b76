"""Before/after pictures of the region of a graph a pipeline changed, as inline SVG.

    diff = graph_diff(before_proto, after_proto)      # JSON-ready, goes into the report
    svg = render_graph(diff["before"], "before")       # one layered drawing per side

A node is "the same" on both sides when its op type, its outputs and its non-weight
inputs are the same (weights may be renamed or rewritten; attributes are not compared).
Nodes only on one side are the change: removed (before) and added (after). Each side
shows those nodes and their direct neighbours (grey), laid out top to bottom in layers
(longest path from the region's sources), ordered within a layer by the mean position of
their predecessors, a layer of more than MAX_ROW nodes wrapped onto several rows. Only the main graph is compared; subgraphs count as part of their node.
"""

from __future__ import annotations

import html
from typing import Any

import onnx

MAX_NODES = 48  # per side; a larger change shows its first nodes in graph order
MAX_ROW = 4  # boxes side by side


def _key(node: onnx.NodeProto, weights: set[str]) -> tuple:
    return (node.domain, node.op_type, tuple(i for i in node.input if i not in weights),
            tuple(node.output))


def _side(graph: onnx.GraphProto, changed: list[int], limit: int) -> dict[str, Any]:
    """The changed nodes (first `limit`) with one ring of neighbours, and their edges.
    Nodes that only compute from weights (Constant, DequantizeLinear of a weight, ...) are
    not drawn: they are counted on the node they feed (its tooltip says how many)."""
    nodes = list(graph.node)
    weights = {t.name for t in graph.initializer}
    weight_only: set[int] = set()
    for i, n in enumerate(nodes):  # graph order is topological
        if all(not t or t in weights for t in n.input) and n.op_type not in ("If", "Loop", "Scan"):
            weight_only.add(i)
            weights.update(o for o in n.output if o)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)
    drawn = [i for i in changed if i not in weight_only]
    core = drawn[:limit]
    keep = set(core)
    for i in core:
        for t in nodes[i].input:
            if t in producer and producer[t] not in weight_only:
                keep.add(producer[t])
        for t in nodes[i].output:
            keep.update(consumers.get(t, ()))
    order = sorted(keep)
    index = {i: k for k, i in enumerate(order)}
    core_set = set(core)
    out_nodes = []
    edges = []
    for i in order:
        n = nodes[i]
        folded = sum(1 for t in n.input if producer.get(t) in weight_only)
        out_nodes.append({"op": n.op_type, "name": n.name or (n.output[0] if n.output else ""),
                          "changed": i in core_set, "weight_nodes": folded})
        for t in n.input:
            j = producer.get(t)
            if j is not None and j in index:
                edges.append([index[j], index[i], t])
    return {"nodes": out_nodes, "edges": edges, "changed": len(changed), "shown": len(core),
            "drawn_changed": len(drawn), "total": len(nodes)}


def graph_diff(before: onnx.ModelProto, after: onnx.ModelProto,
               limit: int = MAX_NODES) -> dict[str, Any] | None:
    """The changed region on each side, or None when the main graphs have the same nodes."""
    wb = {t.name for t in before.graph.initializer}
    wa = {t.name for t in after.graph.initializer}
    kb = [_key(n, wb) for n in before.graph.node]
    ka = [_key(n, wa) for n in after.graph.node]
    sb, sa = set(kb), set(ka)
    removed = [i for i, k in enumerate(kb) if k not in sa]
    added = [i for i, k in enumerate(ka) if k not in sb]
    if not removed and not added:
        return None
    return {"before": _side(before.graph, removed, limit), "after": _side(after.graph, added, limit)}


# ------------------------------------------------------------------------ layout and SVG

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 130, 26, 14, 22, 8


def _layers(n: int, edges: list) -> list[list[int]]:
    preds: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b, *_ in edges:
        if a != b:
            preds[b].append(a)
    layer = [0] * n
    for i in range(n):  # nodes are in graph (topological) order
        layer[i] = max((layer[p] + 1 for p in preds[i] if p < i), default=0)
    rows: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for i in range(n):
        rows[layer[i]].append(i)
    pos: dict[int, float] = {}
    for row in rows:  # barycenter of the predecessors' positions, then graph order
        row.sort(key=lambda i: (sum(pos[p] for p in preds[i] if p in pos) / max(
            1, sum(1 for p in preds[i] if p in pos)) if any(p in pos for p in preds[i]) else i, i))
        for k, i in enumerate(row):
            pos[i] = k - (len(row) - 1) / 2
    # a wide layer wraps onto several rows (no edge joins two nodes of one layer), so the
    # drawing stays narrow enough to read at half a page's width
    return [row[k:k + MAX_ROW] for row in rows for k in range(0, len(row), MAX_ROW)]


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def render_graph(side: dict[str, Any], title: str, *, kind: str = "removed") -> str:
    """One side of a diff as an SVG drawing (scaled to its container by CSS)."""
    nodes, edges = side["nodes"], side["edges"]
    rows = _layers(len(nodes), edges)
    widest = max((len(r) for r in rows), default=1)
    width = max(2 * _PAD + widest * _BOX_W + (widest - 1) * _GAP_X, 240)
    top = 26
    height = top + len(rows) * (_BOX_H + _GAP_Y) + _PAD
    xy: dict[int, tuple[float, float]] = {}
    for r, row in enumerate(rows):
        row_w = len(row) * _BOX_W + (len(row) - 1) * _GAP_X
        x0 = (width - row_w) / 2
        for k, i in enumerate(row):
            xy[i] = (x0 + k * (_BOX_W + _GAP_X), top + r * (_BOX_H + _GAP_Y))
    e = html.escape
    fill = "#fdecea" if kind == "removed" else "#e8f5e9"
    stroke = "#c0392b" if kind == "removed" else "#2a7d2a"
    out = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" role="img" width="{width:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'style="max-width:{width:.0f}px">',
           f"<title>{e(title)}</title>",
           f'<text x="{_PAD}" y="16" class="gtitle">{e(title)}</text>']
    for a, b, tensor in edges:
        (xa, ya), (xb, yb) = xy[a], xy[b]
        x1, y1, x2, y2 = xa + _BOX_W / 2, ya + _BOX_H, xb + _BOX_W / 2, yb
        mid = (y1 + y2) / 2
        out.append(f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} '
                   f'{x2:.1f},{y2 - 3:.1f}"><title>{e(tensor)}</title></path>')
    for i, n in enumerate(nodes):
        x, y = xy[i]
        cls = "node changed" if n["changed"] else "node context"
        style = f' fill="{fill}" stroke="{stroke}"' if n["changed"] else ""
        wn = n.get("weight_nodes") or 0
        out.append(f'<g class="{cls}"><title>{e(n["op"])} {e(n["name"])}'
                   f'{" (" + kind + ")" if n["changed"] else " (unchanged neighbour)"}'
                   f'{f"; fed by {wn} node(s) computing from weights only" if wn else ""}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BOX_W}" height="{_BOX_H}" rx="4"{style}/>'
                   f'<text x="{x + _BOX_W / 2:.1f}" y="{y + _BOX_H / 2 + 4:.1f}">'
                   f'{e(_clip(n["op"], 19))}</text></g>')
    out.append("</svg>")
    return "".join(out)
