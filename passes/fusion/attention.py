"""fuse-attention (--target ort): BERT-style multi-head self-attention -> com.microsoft Attention.

Q, K, V = Add(MatMul(x, W), b) -> Reshape [B, S, N, H] -> Transpose (K to [B, N, H, S]);
Softmax(Q.K^T / sqrt(H) [+ (1 - mask) * c]) . V -> Transpose -> Reshape [B, S, N*H]. The
scale may sit on Q and K instead; it must come to 1/sqrt(H). A mask known to hold only 0
and 1 (bool, or --input-range mask=0:1) becomes mask_index (Cast to int32) with
mask_filter_value c; any other integer mask keeps its float form, expanded to
[B, 1, S, S], as attention_bias, which equals the original for every mask value.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import register_pass
from graphopt.ir import const_value

from .rule import MS, Rule, Scope, axes_of, close, scalar, std

_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast")
_INT_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13}  # TensorProto (u)int8/16/32/64 and bool
_INT32 = 6
_BOOL = 9


def _unscale(scope: Scope, t: gs.Tensor, nodes: list) -> tuple[gs.Tensor, float]:
    """Walk up through Div/Mul by constant scalars (appended to `nodes`): (source, factor)."""
    f = 1.0
    while True:
        p = scope.producer(t, ("Div", "Mul"))
        if p is None or len(p.inputs) != 2:
            return t, f
        pairs = [p.inputs] if p.op == "Div" else [p.inputs, p.inputs[::-1]]
        for a, c in pairs:
            v = const_value(c)
            s = scalar(c)
            if s is not None and v.ndim <= 1 and s != 0 and math.isfinite(s) and const_value(a) is None:
                break
        else:
            return t, f
        f *= 1.0 / s if p.op == "Div" else s
        nodes.append(p)
        t = a


def _shape_entries(scope: Scope, t: gs.Tensor) -> list | None:
    """A Reshape target as entries: ints, or ("dim", tensor, i) for `Shape(tensor)[i]` spelled
    Concat(Unsqueeze(Gather(Shape(tensor), i)), ..., const) by exporters."""
    v = const_value(t)
    if v is not None:
        return [int(a) for a in v.reshape(-1)] if v.dtype.kind == "i" else None
    cat = scope.producer(t, "Concat")
    if cat is None or int(cat.attrs.get("axis", 0)) != 0:
        return None
    entries = []
    for part in cat.inputs:
        v = const_value(part)
        if v is not None:
            if v.dtype.kind != "i" or v.ndim != 1:
                return None
            entries += [int(a) for a in v]
            continue
        un = scope.producer(part, "Unsqueeze")
        g = scope.producer(un.inputs[0], "Gather") if un is not None and axes_of(un) == [0] else None
        idx = const_value(g.inputs[1]) if g is not None else None
        sh = scope.producer(g.inputs[0], "Shape") if idx is not None and idx.ndim == 0 else None
        if sh is None or int(g.attrs.get("axis", 0)) != 0 or int(idx) < 0 or sh.attrs.get("start", 0) \
                or sh.attrs.get("end") is not None:
            return None
        entries.append(("dim", sh.inputs[0], int(idx)))
    return entries


def _static_dim(scope: Scope, e: tuple) -> int | None:
    """Shape(tensor)[i] as an int when the tensor's inferred dim i is static (the exporters'
    "reshape back to x's shape" spelling of [B, S, hidden])."""
    shape = scope.shape(e[1]) or []
    dim = shape[e[2]] if e[2] < len(shape) else None
    return dim if isinstance(dim, int) and dim > 0 else None


def _split_reshape(scope: Scope, rs: gs.Node, rows: list, per_row: int, tail_len: int) -> list | None:
    """Reshape of a [B, S, ...] tensor to [B, S, *tail] with prod(tail) == per_row: the tail.
    B and S may be spelled 0, Shape(r)[0/1] for r in `rows` (tensors known to start [B, S]),
    their static value, or one -1; a tail entry may be Shape(t)[i] of a static dim."""
    entries = _shape_entries(scope, rs.inputs[1]) if len(rs.inputs) == 2 else None
    if entries is None or len(entries) != 2 + tail_len:
        return None
    src = scope.shape(rs.inputs[0]) or []
    wild = 0
    for i, e in enumerate(entries[:2]):
        if isinstance(e, tuple):
            if not any(e[1] is r for r in rows) or e[2] != i:
                return None
        elif e == -1:
            wild += 1
        elif not ((e == 0 and not rs.attrs.get("allowzero", 0)) or (e > 0 and len(src) > i and src[i] == e)):
            return None
    tail = [_static_dim(scope, e) if isinstance(e, tuple) else e for e in entries[2:]]
    if any(e is None or e == 0 or e < -1 for e in tail) or wild + tail.count(-1) > 1:
        return None
    known = math.prod(e for e in tail if e > 0)
    if -1 in tail:
        if per_row % known:
            return None
        tail = [per_row // known if e == -1 else e for e in tail]
    if math.prod(tail) != per_row:
        return None
    return tail


def _qkv_branch(scope: Scope, t: gs.Tensor, perm: list[int], scaled: bool) -> dict | None:
    """Walk up from a head-split Q/K/V tensor: [Div/Mul] Transpose(perm) [Div/Mul] Reshape
    [Div/Mul] Add(bias) MatMul(x, W). Scalar scales only when `scaled` (Q and K)."""
    nodes: list = []
    scale = 1.0
    for op in ("Transpose", "Reshape"):
        if scaled:
            t, f = _unscale(scope, t, nodes)
            scale *= f
        p = scope.producer(t, op)
        if p is None or (op == "Transpose" and list(p.attrs.get("perm", [])) != perm):
            return None
        nodes.append(p)
        t = p.inputs[0]
    reshape = nodes[-1]
    if scaled:
        t, f = _unscale(scope, t, nodes)
        scale *= f
    rows = [t] + [n.outputs[0] for n in nodes[nodes.index(reshape) + 1:]]  # all [B, S, N*H]
    bias = None
    add = scope.producer(t, "Add")
    if add is not None and len(add.inputs) == 2:
        for a, c in (add.inputs, add.inputs[::-1]):
            if const_value(c) is not None and const_value(a) is None:
                nodes.append(add)
                bias, t = const_value(c), a
                rows.append(t)
                break
    mm = scope.producer(t, "MatMul")
    w = const_value(mm.inputs[1]) if mm is not None else None
    if w is None or w.ndim != 2 or w.dtype != np.float32 or const_value(mm.inputs[0]) is not None:
        return None
    if bias is None:
        bias = np.zeros(w.shape[1], np.float32)
    if bias.dtype != np.float32 or bias.size != w.shape[1] or bias.shape[-1:] != (w.shape[1],):
        return None
    nodes.append(mm)
    x = mm.inputs[0]
    split = _split_reshape(scope, reshape, rows + [x], w.shape[1], 2)
    if split is None:
        return None
    return {"x": x, "w": w, "b": bias.reshape(-1), "scale": scale, "heads": split, "nodes": nodes}


def _mask_source(scope: Scope, m: gs.Tensor) -> tuple[gs.Tensor, float] | None:
    """An additive attention mask (1 - Cast(Unsqueeze(mask, [1, 2]))) * c from an integer or bool
    [B, S] mask: (mask, c)."""
    mul = scope.producer(m, "Mul")
    if mul is None or len(mul.inputs) != 2:
        return None
    for s, c in (mul.inputs, mul.inputs[::-1]):
        value = scalar(c)
        sub = scope.producer(s, "Sub")
        if value is not None and math.isfinite(value) and const_value(c).ndim <= 4 and sub is not None \
                and close(scalar(sub.inputs[0]), 1.0) and const_value(sub.inputs[0]).ndim <= 4:
            break
    else:
        return None
    t, chain = sub.inputs[1], []
    while True:
        p = scope.producer(t, ("Cast", "Unsqueeze"))
        if p is None:
            break
        chain.insert(0, p)
        t = p.inputs[0]
    casts = [n for n in chain if n.op == "Cast"]
    if len(casts) != 1 or int(casts[0].attrs.get("to", 0)) != 1:  # one Cast, to float32
        return None
    dims: list = ["B", "S"]
    for n in chain:
        axes = axes_of(n) if n.op == "Unsqueeze" else []
        if axes is None:
            return None
        rank = len(dims) + len(axes)
        for a in sorted(a + rank if a < 0 else a for a in axes):
            dims.insert(a, 1)
    if dims != ["B", 1, 1, "S"] or scope.types.get(t.name) not in _INT_TYPES:
        return None
    return t, value


def _zero_one(scope: Scope, src: gs.Tensor) -> bool:
    """`src` only holds 0 and 1: a bool, or a graph input given that range (--input-range)."""
    if scope.types.get(src.name) == _BOOL:
        return True
    r = scope.ctx.input_ranges.get(src.name)
    return r is not None and any(t is src for t in scope.graph.inputs) \
        and math.ceil(r[0]) >= 0 and math.floor(r[1]) <= 1


def _mask_index(scope: Scope, src: gs.Tensor) -> gs.Tensor:
    """`src` as int32 (Attention's mask_index type), sharing one Cast between layers."""
    if scope.types.get(src.name) == _INT32:
        return src
    for n in src.outputs:
        if n.op == "Cast" and std(n) and id(n) not in scope.dead and int(n.attrs.get("to", 0)) == _INT32:
            return n.outputs[0]
    out = gs.Variable(scope.namer(f"{src.name}_int32"), dtype=np.int32)
    scope.graph.nodes.append(gs.Node("Cast", name=scope.namer(f"{src.name}_Cast"), attrs={"to": _INT32},
                                     inputs=[src], outputs=[out]))
    return out


def _row_bias(scope: Scope, m: gs.Tensor) -> gs.Tensor:
    """The [B, 1, 1, T] additive mask expanded to [B, 1, T, T] (attention_bias wants the query
    axis): Expand(m, Shape(Transpose(m, [0, 1, 3, 2]))), shared between layers."""
    for n in m.outputs:
        if n.op == "Expand" and std(n) and id(n) not in scope.dead and n.inputs[0] is m:
            sh = scope.producer(n.inputs[1], "Shape")
            tr = scope.producer(sh.inputs[0], "Transpose") if sh is not None else None
            if tr is not None and tr.inputs[0] is m and list(tr.attrs.get("perm", [])) == [0, 1, 3, 2]:
                return n.outputs[0]
    col = gs.Variable(scope.namer(f"{m.name}_col"), dtype=np.float32)
    shape = gs.Variable(scope.namer(f"{m.name}_rows_shape"), dtype=np.int64)
    out = gs.Variable(scope.namer(f"{m.name}_rows"), dtype=np.float32)
    scope.graph.nodes += [
        gs.Node("Transpose", name=scope.namer(f"{m.name}_Transpose"), attrs={"perm": [0, 1, 3, 2]},
                inputs=[m], outputs=[col]),
        gs.Node("Shape", name=scope.namer(f"{m.name}_Shape"), inputs=[col], outputs=[shape]),
        gs.Node("Expand", name=scope.namer(f"{m.name}_Expand"), inputs=[m, shape], outputs=[out])]
    return out


def _pattern_closure(scope: Scope, nodes: list, keep: gs.Tensor) -> list | None:
    """The shape-computation nodes that read the tensors `nodes` produce (other than `keep`),
    if everything reading those tensors stays inside `nodes` plus them; else None."""
    inside = {id(n) for n in nodes}
    extra: list = []
    todo = [t for n in nodes for t in n.outputs if t is not keep]
    while todo:
        t = todo.pop()
        if t.name in scope.protected:
            return None
        for r in t.outputs:
            if id(r) in inside or id(r) in scope.dead:
                continue
            if r.op not in _SHAPE_OPS or not std(r):
                return None
            inside.add(id(r))
            extra.append(r)
            todo.extend(r.outputs)
    return extra


def _scores(scope: Scope, sm: gs.Node):
    """Softmax's input walked up to Q.K^T: (qk MatMul, nodes, scale, mask, mask tensor) or
    None when no MatMul is behind it (not a candidate), or a reason."""
    nodes, t, mask, mask_add = [sm], sm.inputs[0], None, None
    add = scope.producer(t, "Add")
    if add is not None and len(add.inputs) == 2:
        for s, m in (add.inputs, add.inputs[::-1]):
            mask, mask_add = _mask_source(scope, m), m
            if mask is not None:
                nodes.append(add)
                t = s
                break
        else:
            if not any(scope.producer(_unscale(scope, s, [])[0], "MatMul") for s in add.inputs):
                return None
            return "additive bias is not a (1 - mask) * c mask"
    t, scale = _unscale(scope, t, nodes)
    qk = scope.producer(t, "MatMul")
    return None if qk is None else (qk, nodes + [qk], scale, mask, mask_add)


@register_pass("fuse-attention")
class FuseAttention(Rule):
    """--target ort: BERT-style multi-head self-attention subgraph -> com.microsoft Attention."""

    anchor = ("Softmax",)
    emits = {"ort": (1, None)}
    needs_shapes = True

    def match(self, scope, sm):
        found = _scores(scope, sm)
        if found is None or isinstance(found, str):
            return found
        qk, nodes, scale, mask, mask_add = found
        if int(sm.attrs.get("axis", -1 if (scope.model.opset() or 0) >= 13 else 1)) not in (-1, 3):
            return "Softmax not over the last axis"
        q = _qkv_branch(scope, qk.inputs[0], [0, 2, 1, 3], True)
        k = _qkv_branch(scope, qk.inputs[1], [0, 2, 3, 1], True)
        if q is None or k is None:
            return "Q or K is not MatMul + bias -> Reshape [B, S, N, H] -> Transpose"
        pv = scope.sole_consumer(sm.outputs[0])
        if pv is None or pv.op != "MatMul" or not std(pv) or pv.inputs[0] is not sm.outputs[0]:
            return "probabilities not only multiplied by V"
        v = _qkv_branch(scope, pv.inputs[1], [0, 2, 1, 3], False)
        if v is None:
            return "V is not MatMul + bias -> Reshape [B, S, N, H] -> Transpose"
        tr = scope.sole_consumer(pv.outputs[0])
        if tr is None or tr.op != "Transpose" or not std(tr) or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3]:
            return "context not transposed back to [B, S, N, H]"
        ctx = tr.outputs[0]
        out_rs = [n for n in ctx.outputs
                  if n.op == "Reshape" and std(n) and n.inputs[0] is ctx and id(n) not in scope.dead]
        x = q["x"]
        xs = scope.shape(x)
        if len(out_rs) != 1 or k["x"] is not x or v["x"] is not x or xs is None or len(xs) != 3:
            return "Q, K, V not from one [batch, seq, hidden] input"
        heads, dh = q["heads"]
        w_shape = q["w"].shape
        if k["heads"] != [heads, dh] or v["heads"] != [heads, dh] or k["w"].shape != w_shape or v["w"].shape != w_shape:
            return "Q, K, V head shapes differ"
        if not close(scale * q["scale"] * k["scale"], 1 / math.sqrt(dh)):
            return "scores not scaled by 1/sqrt(head size)"
        if _split_reshape(scope, out_rs[0], [ctx, x], heads * dh, 1) is None:
            return "output Reshape not provably [batch, seq, hidden]"
        if mask is not None:
            ms = scope.shape(mask[0])
            if ms is None or len(ms) != 2 or any(
                    (a == 1 and b != 1) or (isinstance(a, int) and isinstance(b, int) and a != b) for a, b in zip(ms, xs)):
                return "mask shape not provably [batch, seq]"  # a broadcast mask is not a mask_index
        chain = nodes + [pv, tr] + q["nodes"] + k["nodes"] + v["nodes"]
        if len({id(n) for n in chain}) != len(chain) or any(id(n) in scope.dead for n in chain):
            return "Q, K, V chains overlap"
        live = {id(n) for n in scope.graph.nodes}
        if not all(id(n) in live for n in chain + [out_rs[0]]):
            return "match reaches into an outer graph"
        extra = _pattern_closure(scope, chain + [out_rs[0]], out_rs[0].outputs[0])
        if extra is None:
            return "an intermediate tensor is read outside the pattern"
        return chain + extra, out_rs[0], x, q, k, v, int(heads), mask, mask_add

    def rewrite(self, scope, sm, m):
        chain, last, x, q, k, v, heads, mask, mask_add = m
        weights = np.concatenate([q["w"], k["w"], v["w"]], axis=1)
        bias = np.concatenate([q["b"], k["b"], v["b"]])
        inputs = [x, scope.const("attention_qkv_weight", weights), scope.const("attention_qkv_bias", bias)]
        attrs = {"num_heads": heads}
        if mask is not None and _zero_one(scope, mask[0]):  # mask_index: 0 adds mask_filter_value, 1 adds 0
            inputs.append(_mask_index(scope, mask[0]))
            if mask[1] != -10000.0:
                attrs["mask_filter_value"] = float(mask[1])
        elif mask is not None:  # other values too: keep (1 - mask) * c, exact, as attention_bias
            inputs += [gs.Variable.empty(), gs.Variable.empty(), _row_bias(scope, mask_add)]
        scope.replace_chain(chain, last, "Attention", inputs, attrs=attrs, domain=MS)
        # the shape and mask nodes left unread go with the graph's dead nodes (Rule.run)
