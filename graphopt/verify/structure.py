"""Structural identity: when two models provably compute the same outputs, no run is needed.

`computation_digest(model)` hashes exactly what the graph outputs are computed from: the
graph inputs (names, types), the nodes that reach an output in their order (op, domain,
attributes, which values they read and write), the constants those nodes read (dtype,
shape and bytes, not their names), the graph outputs (names, types), the opsets and the
model-local functions. Intermediate tensor names, dead nodes, unused initializers and
duplicate copies of the same constant do not enter it. Two models with equal digests run
the same ops on the same values in the same order, so their outputs are bit-identical —
the strongest contract (`exact`) holds without running either.

Used by the verification instrument to skip the runs of passes such as dce,
prune-initializers and the initializer half of cse. Models with subgraphs (If, Loop,
Scan) or external data get no digest (None) and are always checked by running them.
"""

from __future__ import annotations

import hashlib

import onnx
from onnx import numpy_helper


def computation_digest(model: onnx.ModelProto, content: bool = True) -> str | None:
    """The digest described above. `content=False` identifies constants by dtype and shape
    only: a cheap first test (different there means different computation) that spares
    hashing the weights when a pass visibly changed the graph."""
    g = model.graph
    h = hashlib.blake2b(digest_size=20)

    def put(*parts: object) -> None:
        for p in parts:
            h.update(p if isinstance(p, bytes) else repr(p).encode())
            h.update(b"\x00")

    consts: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in consts.values()) or len(g.sparse_initializer):
        return None
    inputs = {i.name for i in g.input if i.name not in consts}
    producer: dict[str, tuple[int, int]] = {}
    for ni, node in enumerate(g.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None
        for k, o in enumerate(node.output):
            if o:
                producer[o] = (ni, k)
    # the cone: nodes some graph output depends on
    live: set[int] = set()
    todo = [o.name for o in g.output]
    seen: set[str] = set()
    while todo:
        t = todo.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        ni = producer[t][0]
        if ni not in live:
            live.add(ni)
            todo.extend(i for i in g.node[ni].input if i)
    order = sorted(live)
    canon: dict[str, str] = {name: f"in:{name}" for name in inputs}
    const_ids: dict[str, str] = {}

    def value(name: str) -> str:
        if not name:
            return ""
        if name in canon:
            return canon[name]
        if name in consts:
            if name not in const_ids:
                t = consts[name]
                if content:
                    data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                    key = hashlib.blake2b(data, digest_size=16).hexdigest()
                else:
                    key = "?"
                const_ids[name] = "const:%d:%s:%s" % (t.data_type, list(t.dims), key)
            return const_ids[name]
        return f"undefined:{name}"  # an input nobody defines: keep the name, never equal by accident

    put("opsets", sorted((o.domain, o.version) for o in model.opset_import))
    put("functions", [f.SerializeToString(deterministic=True) for f in model.functions])
    for i in g.input:
        if i.name in inputs:
            put("input", i.name, i.type.SerializeToString(deterministic=True))
    for pos, ni in enumerate(order):
        node = g.node[ni]
        attrs = sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute)
        put("node", node.domain or "", node.op_type, attrs, [value(i) for i in node.input], len(node.output))
        for k, o in enumerate(node.output):
            if o:
                canon[o] = f"n{pos}:{k}"
    for o in g.output:
        put("output", o.name, value(o.name), o.type.SerializeToString(deterministic=True))
    return h.hexdigest()
