"""Fusion passes (group `fuse`): Conv-BN fold, activation fusion and the algebra around them.

Every pass is a small local rewrite over each (sub)graph. A rewrite only fires when the
intermediate tensors it removes have exactly one consumer, are not graph outputs and are
not read by a subgraph. The last node of a matched chain hands its output tensor over to
the fused node, so names, consumers and graph outputs are kept; producers a rewrite
leaves unread (a replaced weight's Constant node) are removed with the graph's dead nodes.

Target awareness (PassContext.target): 'onnx' and 'tvm' get standard ops only, and only
those the model's opset has (HardSwish >= 14, LayerNormalization >= 17, Gelu >= 20);
'ort' additionally gets com.microsoft FusedConv / FusedGemm / Gelu / BiasGelu /
SkipLayerNormalization / Attention. `upgrade-opset`
(first in the group) converts the model with onnx's version converter, but only when
the user allowed it (allow_opset_upgrade) and a fusion needs the newer opset.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import Model, Option, Pass, PassContext, PassResult, register_group, register_pass
from graphopt.ir import (const_value, fresh_namer, iter_graphs, iter_nodes, observed_names, remove_dead_nodes,
                         why_not_replace)

log = logging.getLogger(__name__)

MS = "com.microsoft"


# -- tiny pattern-matching helpers ------------------------------------------------------


class _Scope:
    """Facts about one graph a rewrite needs: which tensors must stay observable."""

    def __init__(self, graph: gs.Graph, model: Model, ctx: PassContext):
        self.graph = graph
        self.model = model
        self.ctx = ctx
        # Graph outputs and values nested subgraphs read by name (ir's scope rules).
        self.protected = observed_names(graph)
        self.namer = fresh_namer(graph)
        self.dead: set[int] = set()
        self.shapes: dict[str, list] = {}  # inferred shapes, for passes that ask for them
        self.types: dict[str, int] = {}  # inferred elem types (onnx TensorProto enums)

    def sole_consumer(self, t: gs.Tensor) -> gs.Node | None:
        """The one node reading `t`, if `t` is private to it (else None)."""
        if isinstance(t, gs.Constant) or t.name in self.protected or len(t.outputs) != 1:
            return None
        node = t.outputs[0]
        return None if id(node) in self.dead else node

    def private(self, t: gs.Tensor) -> bool:
        return self.sole_consumer(t) is not None

    def producer(self, t: gs.Tensor, op: str | tuple | None = None) -> gs.Node | None:
        if len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if id(node) in self.dead or (op is not None and node.op not in _ops(op)) or not _std(node):
            return None
        return node

    def const(self, name: str, value) -> gs.Constant:
        return gs.Constant(self.namer(name), np.ascontiguousarray(value))

    def kill(self, *nodes: gs.Node) -> None:
        for n in nodes:
            self.dead.add(id(n))
            n.inputs.clear()
            n.outputs.clear()

    def replace_chain(self, first_nodes, last: gs.Node, op: str, inputs, attrs=None, domain=None) -> gs.Node:
        """Replace the matched nodes with one node that takes over `last`'s output tensor."""
        out = last.outputs[0]
        self.kill(*first_nodes)
        if id(last) not in self.dead:
            self.kill(last)
        node = gs.Node(op, name=self.namer(f"{out.name}_{op}"), attrs=attrs or {}, inputs=list(inputs), outputs=[out])
        if domain:
            node.domain = domain
        self.graph.nodes.append(node)
        return node

    def finish(self) -> None:
        if self.dead:
            self.graph.nodes = [n for n in self.graph.nodes if id(n) not in self.dead]


def _ops(op):
    return (op,) if isinstance(op, str) else tuple(op)


def _std(node: gs.Node) -> bool:
    return node.domain in ("", "ai.onnx", None)


def _scalar(t: gs.Tensor) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1 or v.dtype.kind != "f":
        return None
    return float(v.reshape(()))


def _other_input(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    """For a binary op with `t` as one input, the other input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is t and b is not t:
        return b
    if b is t and a is not t:
        return a
    return None


def _close(v: float | None, target: float, rtol: float = 1e-4) -> bool:
    return v is not None and abs(v - target) <= rtol * abs(target) + 1e-7


def _walk(model: Model, ctx: PassContext, fn, shapes: dict | None = None, types: dict | None = None) -> int:
    """Run `fn(scope, node)` over every node of every graph; count rewrites. A graph that
    was rewritten loses the nodes nothing reads any more (e.g. the Constant node that
    held a weight the rewrite replaced)."""
    total = 0
    for graph in list(iter_graphs(model.graph)):
        scope = _Scope(graph, model, ctx)
        scope.shapes = shapes or {}
        scope.types = types or {}
        fired = 0
        for node in list(graph.nodes):
            if id(node) in scope.dead or not _std(node):
                continue
            if fn(scope, node):
                fired += 1
        scope.finish()
        if fired:
            remove_dead_nodes(graph)
        total += fired
    return total


class _LocalRewrite(Pass):
    """A pass that applies one local rewrite (`rewrite(scope, node) -> bool`) to every node
    of every graph and reports how many times it fired under `stat`."""

    rewrite = staticmethod(lambda scope, node: False)
    stat = "fused"
    only_target: str | None = None  # e.g. "ort": the pass does nothing for other targets
    needs_shapes = False  # run onnx shape inference first (scope.shapes / scope.types)
    anchor: str | None = None  # an op every match contains: without one, skip (and skip shape inference)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if self.only_target and ctx.target != self.only_target:
            return PassResult(False, {self.stat: 0})
        if self.anchor and not any(n.op == self.anchor for n in iter_nodes(model.graph)):
            return PassResult(False, {self.stat: 0})
        extra = _inferred_shapes(model) if self.needs_shapes else ()
        n = _walk(model, ctx, self.rewrite, *extra)
        return PassResult(n > 0, {self.stat: n})


def _float_dtype(t: gs.Tensor) -> bool:
    v = const_value(t)
    return v is not None and v.dtype in (np.float32, np.float64, np.float16)


# -- Conv/Gemm-BN folding ---------------------------------------------------------------


def _bn_params(scope: _Scope, bn: gs.Node):
    if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
        return None
    vals = [const_value(t) for t in bn.inputs[1:5]]
    if len(vals) != 4 or any(v is None for v in vals):
        return None
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _fold_channel_affine(scope: _Scope, prod: gs.Node, s: np.ndarray, t: np.ndarray) -> bool:
    """Make producer (Conv / ConvTranspose / Gemm) compute y*s + t, s and t per output channel
    (1-D of length C or broadcastable scalars). Returns False if it cannot."""
    w = const_value(prod.inputs[1])
    if w is None or w.dtype.kind != "f" or w.ndim < 2:
        return False
    b = const_value(prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2].name else None
    if len(prod.inputs) > 2 and prod.inputs[2].name and b is None:
        return False
    w64 = w.astype(np.float64)
    if prod.op == "Conv":
        c = w.shape[0]
        s = np.broadcast_to(s, (c,)) if s.size in (1, c) else None
        if s is None:
            return False
        w64 = w64 * s.reshape((c,) + (1,) * (w.ndim - 1))
    elif prod.op == "ConvTranspose":
        g = int(prod.attrs.get("group", 1))
        cpg = w.shape[1]
        c = cpg * g
        s = np.broadcast_to(s, (c,)) if s.size in (1, c) else None
        if s is None:
            return False
        shaped = w64.reshape((g, w.shape[0] // g, cpg) + w.shape[2:])
        w64 = (shaped * s.reshape((g, 1, cpg) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif prod.op == "Gemm":
        if w.ndim != 2:
            return False
        trans_b = int(prod.attrs.get("transB", 0))
        c = w.shape[0] if trans_b else w.shape[1]
        s = np.broadcast_to(s, (c,)) if s.size in (1, c) else None
        if s is None:
            return False
        w64 = w64 * (s.reshape(c, 1) if trans_b else s.reshape(1, c))
        if b is not None:
            beta = float(prod.attrs.get("beta", 1.0))
            if b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or b.shape[-1:] not in ((c,), (1,)) and b.ndim:
                return False
            b = np.broadcast_to(b.reshape(-1), (c,)).astype(np.float64) * beta
            prod.attrs["beta"] = 1.0
    else:
        return False
    t = np.broadcast_to(t, (c,))
    b64 = (b.astype(np.float64).reshape(-1) if b is not None else np.zeros(c)) * s + t
    if b64.shape != (c,):
        return False
    prod.inputs[1] = scope.const(prod.inputs[1].name + "_fused", w64.astype(w.dtype))
    newb = scope.const((prod.inputs[1].name) + "_bias", b64.astype(w.dtype))
    if len(prod.inputs) > 2:
        prod.inputs[2] = newb
    else:
        prod.inputs.append(newb)
    return True


def _fold_bn(scope: _Scope, bn: gs.Node) -> bool:
    if bn.op != "BatchNormalization":
        return False
    x = bn.inputs[0]
    prod = scope.producer(x, ("Conv", "ConvTranspose", "Gemm", "MatMul"))
    if prod is None or not scope.private(x) or len(prod.outputs) != 1:
        return _fold_bn_forward(scope, bn)
    params = _bn_params(scope, bn)
    if params is None:
        return False
    s, t = params
    if prod.op == "MatMul":
        # BatchNorm1d after a bias-free Linear on 2-D input: becomes a Gemm.
        w = const_value(prod.inputs[1])
        a = prod.inputs[0]
        if w is None or w.ndim != 2 or a.shape is None or len(a.shape) != 2:
            return False
        prod.op = "Gemm"
        prod.attrs.clear()
    elif prod.op in ("Conv", "ConvTranspose"):
        if x.shape is not None and len(x.shape) < 3:
            return False
    if not _fold_channel_affine(scope, prod, s, t):
        if prod.op == "Gemm" and not prod.attrs:
            prod.op = "MatMul"
        return False
    out = bn.outputs[0]
    scope.kill(bn)
    prod.outputs[0] = out
    return True


def _zero_padding(conv: gs.Node, w: np.ndarray) -> bool:
    """True when the Conv reads no padding (so a per-channel shift of its input is exact)."""
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in w.shape[2:])  # SAME never pads a 1x1 kernel
    return auto_pad == "VALID" or not any(conv.attrs.get("pads", []))


def _fold_bn_forward(scope: _Scope, bn: gs.Node) -> bool:
    """BatchNormalization feeding a Conv (zero padding) or a Gemm: y = x*s + t goes into the
    consumer's weights (scaled along their input channels) and bias (plus W applied to t)."""
    y = bn.outputs[0] if len(bn.outputs) == 1 else None
    cons = scope.sole_consumer(y) if y is not None else None
    if cons is None or not _std(cons) or cons.op not in ("Conv", "Gemm") or cons.inputs[0] is not y:
        return False
    params = _bn_params(scope, bn)
    w = const_value(cons.inputs[1]) if len(cons.inputs) > 1 else None
    has_b = len(cons.inputs) > 2 and cons.inputs[2].name
    b = const_value(cons.inputs[2]) if has_b else None
    if params is None or w is None or w.dtype.kind != "f" or (has_b and b is None):
        return False
    s, t = params
    w64 = w.astype(np.float64)
    if cons.op == "Conv":
        if w.ndim < 3 or not _zero_padding(cons, w):
            return False
        o, cpg = w.shape[0], w.shape[1]
        g = int(cons.attrs.get("group", 1))
        if s.size != cpg * g or o % g:
            return False
        idx = (np.arange(o) // (o // g))[:, None] * cpg + np.arange(cpg)[None, :]  # [O, C/g] -> channel
        extra = (1,) * (w.ndim - 2)
        new_w = w64 * s[idx].reshape(idx.shape + extra)
        shift = (w64 * t[idx].reshape(idx.shape + extra)).reshape(o, -1).sum(axis=1)
        new_b = (b.astype(np.float64).reshape(-1) if b is not None else np.zeros(o)) + shift
        if new_b.shape != (o,):
            return False
    else:  # Gemm: Y = alpha * A' B + beta * C with A' = A*s + t on A's columns
        if w.ndim != 2 or int(cons.attrs.get("transA", 0)):
            return False
        trans_b = int(cons.attrs.get("transB", 0))
        k = w.shape[1] if trans_b else w.shape[0]
        n = w.shape[0] if trans_b else w.shape[1]
        if s.size != k:
            return False
        new_w = w64 * (s.reshape(1, k) if trans_b else s.reshape(k, 1))
        alpha, beta = float(cons.attrs.get("alpha", 1.0)), float(cons.attrs.get("beta", 1.0))
        shift = alpha * ((w64 @ t) if trans_b else (t @ w64))
        if b is not None and (b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or b.shape[-1:] not in ((n,), (1,))):
            return False
        base = np.broadcast_to(b.reshape(-1), (n,)).astype(np.float64) * beta if b is not None else np.zeros(n)
        new_b = base + shift
        cons.attrs["beta"] = 1.0
    cons.inputs[0] = bn.inputs[0]
    cons.inputs[1] = scope.const(cons.inputs[1].name + "_fused", new_w.astype(w.dtype))
    bias = scope.const(cons.inputs[1].name + "_bias", new_b.astype(w.dtype))
    if len(cons.inputs) > 2:
        cons.inputs[2] = bias
    else:
        cons.inputs.append(bias)
    scope.kill(bn)
    return True


@register_pass("fold-bn")
class FoldBatchNorm(_LocalRewrite):
    """Fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul, or the following zero-padded Conv / Gemm."""

    contract = "float"
    rewrite = staticmethod(_fold_bn)
    stat = "folded"


def _channel_vector(v: np.ndarray, out_rank: int | None, axis: int) -> np.ndarray | None:
    """If constant `v` broadcast against an output of rank `out_rank` only varies along
    `axis` (or is a scalar), return it as a 1-D per-channel vector (or size-1)."""
    if v.size == 1:
        return v.reshape(1)
    if out_rank is None or v.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - v.ndim) + v.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis):
        return None
    return v.reshape(-1)


def _fold_affine(scope: _Scope, node: gs.Node) -> bool:
    if node.op not in ("Mul", "Add") or len(node.inputs) != 2:
        return False
    for x, c in (node.inputs, node.inputs[::-1]):
        prod = scope.producer(x, ("Conv", "ConvTranspose", "Gemm"))
        v = const_value(c)
        if prod is None or v is None or v.dtype.kind != "f" or not scope.private(x):
            continue
        w = const_value(prod.inputs[1])
        if w is None or w.dtype != v.dtype:
            continue
        rank = 2 if prod.op == "Gemm" else (w.ndim if w.ndim >= 3 else None)
        if rank is None and v.size != 1:
            continue
        vec = _channel_vector(v, rank, 1 if prod.op != "Gemm" else 1)
        if vec is None or (rank is not None and v.ndim > rank):
            continue
        vec = vec.astype(np.float64)
        if node.op == "Mul":
            ok = _fold_channel_affine(scope, prod, vec, np.zeros(1))
        else:
            ok = _fold_channel_affine(scope, prod, np.ones(1), vec)
        if ok:
            out = node.outputs[0]
            scope.kill(node)
            prod.outputs[0] = out
            return True
    return False


@register_pass("fold-affine")
class FoldAffine(_LocalRewrite):
    """Fold Mul/Add by per-output-channel or scalar constants into Conv/Gemm weights and bias."""

    contract = "float"
    rewrite = staticmethod(_fold_affine)
    stat = "folded"


def _fuse_gemm(scope: _Scope, mm: gs.Node) -> bool:
    if mm.op != "MatMul":
        return False
    a, bt = mm.inputs
    y = mm.outputs[0]
    w = const_value(bt)
    if w is None or w.ndim != 2 or w.dtype.kind != "f" or a.shape is None or len(a.shape) != 2:
        return False
    add = scope.sole_consumer(y)
    if add is None or add.op != "Add" or not _std(add):
        return False
    c = _other_input(add, y)
    cv = const_value(c) if c is not None else None
    if cv is None or cv.dtype != w.dtype:
        return False
    n = w.shape[1]
    if not (cv.shape == (n,) or cv.shape == (1, n)):
        return False
    scope.replace_chain([mm], add, "Gemm", [a, bt, scope.const(c.name + "_gemm", cv.reshape(n))])
    return True


@register_pass("fuse-gemm")
class FuseGemm(_LocalRewrite):
    """MatMul(2-D A, constant 2-D B) + Add(1-D bias) -> Gemm."""

    contract = "float"
    rewrite = staticmethod(_fuse_gemm)


# -- activation fusion --------------------------------------------------------------------


def _fuse_hardswish(scope: _Scope, mul: gs.Node) -> bool:
    if mul.op != "Mul" or (scope.model.opset() or 0) < 14 or len(mul.inputs) != 2:
        return False
    for x, h in (mul.inputs, mul.inputs[::-1]):
        hs = scope.producer(h, "HardSigmoid")
        if hs is None or hs.inputs[0] is not x or not scope.private(h):
            continue
        if not (_close(hs.attrs.get("alpha", 0.2), 1 / 6) and _close(hs.attrs.get("beta", 0.5), 0.5)):
            continue
        scope.replace_chain([hs], mul, "HardSwish", [x])
        return True
    return False


@register_pass("fuse-hardswish")
class FuseHardSwish(_LocalRewrite):
    """x * HardSigmoid(x; 1/6, 0.5) -> HardSwish (opset >= 14)."""

    contract = "float"
    rewrite = staticmethod(_fuse_hardswish)


def _gelu_target(scope: _Scope) -> tuple[str, str | None] | None:
    if scope.ctx.target == "ort":
        return ("Gelu", None) if (scope.model.opset() or 0) >= 20 else ("Gelu", MS)
    if (scope.model.opset() or 0) >= 20:
        return ("Gelu", None)
    return None


def _fuse_gelu(scope: _Scope, erf: gs.Node) -> bool:
    """0.5 * x * (1 + erf(x / sqrt2)) in its exporter spellings."""
    if erf.op != "Erf":
        return False
    kind = _gelu_target(scope)
    if kind is None:
        return False
    pre = scope.producer(erf.inputs[0], ("Div", "Mul"))
    if pre is None or not scope.private(erf.inputs[0]):
        return False
    x = None
    for cand, c in (pre.inputs, pre.inputs[::-1]):
        v = _scalar(c)
        if pre.op == "Div" and cand is pre.inputs[0] and _close(v, math.sqrt(2)):
            x = cand
        elif pre.op == "Mul" and _close(v, 1 / math.sqrt(2)):
            x = cand
        if x is not None:
            break
    if x is None:
        return False
    add = scope.sole_consumer(erf.outputs[0])
    if add is None or add.op != "Add" or not _close(_scalar(_other_input(add, erf.outputs[0]) or erf.outputs[0]), 1.0):
        return False
    s = add.outputs[0]
    m1 = scope.sole_consumer(s)
    if m1 is None or m1.op != "Mul":
        return False
    other = _other_input(m1, s)
    if other is None:
        return False
    nodes = [pre, erf, add]
    last = None
    if other is x:  # (x * s) * 0.5
        m2 = scope.sole_consumer(m1.outputs[0])
        if m2 is not None and m2.op == "Mul" and _close(_scalar(_other_input(m2, m1.outputs[0]) or s), 0.5):
            nodes.append(m1)
            last = m2
    elif _close(_scalar(other), 0.5):  # (s * 0.5) * x
        m2 = scope.sole_consumer(m1.outputs[0])
        if m2 is not None and m2.op == "Mul" and _other_input(m2, m1.outputs[0]) is x:
            nodes.append(m1)
            last = m2
    else:  # (x * 0.5) * s
        h = scope.producer(other, "Mul")
        if h is not None and scope.private(other) and _other_input(h, x) is not None \
                and _close(_scalar(_other_input(h, x)), 0.5):
            nodes.append(h)
            last = m1
    if last is None:
        return False
    scope.replace_chain(nodes, last, kind[0], [x], domain=kind[1])
    return True


@register_pass("fuse-gelu")
class FuseGelu(_LocalRewrite):
    """Erf-form GELU subgraph -> Gelu (opset >= 20, or com.microsoft Gelu for --target ort)."""

    contract = "float"
    rewrite = staticmethod(_fuse_gelu)


def _shape_of(scope: _Scope, t: gs.Tensor) -> list | None:
    s = scope.shapes.get(t.name)
    return list(s) if s is not None else (list(t.shape) if t.shape is not None else None)


def _fuse_bias_gelu(scope: _Scope, add: gs.Node) -> bool:
    """--target ort: Add(x, bias[H]) -> Gelu  =>  com.microsoft BiasGelu(x, bias)."""
    if scope.ctx.target != "ort" or add.op != "Add" or len(add.inputs) != 2:
        return False
    gelu = scope.sole_consumer(add.outputs[0])
    if gelu is None or gelu.op != "Gelu" or gelu.attrs.get("approximate", "none") != "none" \
            or gelu.domain not in ("", "ai.onnx", None, MS):
        return False
    for x, b in (add.inputs, add.inputs[::-1]):
        bv = const_value(b)
        xs = _shape_of(scope, x)
        if bv is None or bv.ndim != 1 or const_value(x) is not None or not xs:
            continue
        if xs[-1] != bv.shape[0] or bv.dtype != np.float32:
            continue
        scope.replace_chain([add], gelu, "BiasGelu", [x, b], domain=MS)
        return True
    return False


@register_pass("fuse-bias-gelu")
class FuseBiasGelu(_LocalRewrite):
    """--target ort: Add(x, bias) + Gelu -> com.microsoft BiasGelu."""

    contract = "float"
    rewrite = staticmethod(_fuse_bias_gelu)
    only_target = "ort"
    needs_shapes = True


def _fuse_skip_layernorm(scope: _Scope, add: gs.Node) -> bool:
    """--target ort: Add(a, b) -> LayerNormalization(last axis), a and b of the same [B, S, H]
    shape, optionally a = Add(MatMul, bias[H])  =>  com.microsoft SkipLayerNormalization.
    When the sum is read elsewhere too (the next residual), its 4th output provides it."""
    if scope.ctx.target != "ort" or add.op != "Add" or len(add.inputs) != 2:
        return False
    s = add.outputs[0]
    readers = [n for n in s.outputs if id(n) not in scope.dead]
    lns = [n for n in readers if n.op == "LayerNormalization" and _std(n) and n.inputs[0] is s]
    if len(lns) != 1:
        return False
    ln = lns[0]
    a, b = add.inputs
    sa, sb = _shape_of(scope, a), _shape_of(scope, b)
    if sa is None or sb is None or len(sa) != 3 or list(sa) != list(sb) or not isinstance(sa[-1], int):
        return False
    if const_value(a) is not None or const_value(b) is not None:
        return False
    hidden = int(sa[-1])
    if int(ln.attrs.get("axis", -1)) not in (-1, 2) or int(ln.attrs.get("stash_type", 1)) != 1:
        return False
    if any(t.name and (t.outputs or t.name in scope.protected) for t in ln.outputs[1:]):
        return False  # mean / inv_std_dev are read: keep the plain op
    gamma = const_value(ln.inputs[1]) if len(ln.inputs) > 1 else None
    beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2].name else None
    if gamma is None or gamma.shape != (hidden,) or (beta is not None and beta.shape != (hidden,)):
        return False
    if len(ln.inputs) > 2 and ln.inputs[2].name and beta is None:
        return False
    inputs, skip, bias, absorbed = a, b, None, []
    for x, y in ((a, b), (b, a)):  # a bias Add feeding the sum is absorbed as `bias`
        prod = scope.producer(x, "Add")
        if prod is None or not scope.private(x) or len(prod.inputs) != 2:
            continue
        for p, c in (prod.inputs, prod.inputs[::-1]):
            cv = const_value(c)
            if cv is not None and cv.shape == (hidden,) and const_value(p) is None \
                    and _shape_of(scope, p) is not None and list(_shape_of(scope, p)) == list(sa):
                inputs, skip, bias, absorbed = p, y, c, [prod]
                break
        if absorbed:
            break
    others = [n for n in readers if n is not ln]
    if s.name in scope.protected and not others:
        others = [None]  # a graph output: keep the sum observable
    ins = [inputs, skip, ln.inputs[1], ln.inputs[2] if beta is not None else gs.Variable.empty()]
    if bias is not None:
        ins.append(bias)
    while not ins[-1].name:
        ins.pop()
    out = ln.outputs[0]
    scope.kill(*absorbed, add, ln)
    outputs = [out]
    if others:
        outputs += [gs.Variable.empty(), gs.Variable.empty(), s]
    node = gs.Node("SkipLayerNormalization", name=scope.namer(f"{out.name}_SkipLayerNormalization"),
                   attrs={"epsilon": float(ln.attrs.get("epsilon", 1e-5))}, inputs=ins, outputs=outputs)
    node.domain = MS
    scope.graph.nodes.append(node)
    return True


@register_pass("fuse-skip-layernorm")
class FuseSkipLayerNorm(_LocalRewrite):
    """--target ort: residual Add (+ bias) + LayerNormalization -> com.microsoft SkipLayerNormalization."""

    contract = "float"
    rewrite = staticmethod(_fuse_skip_layernorm)
    only_target = "ort"
    needs_shapes = True


# -- multi-head self-attention (--target ort) ------------------------------------------------

_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast")
_INT_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13}  # TensorProto (u)int8/16/32/64 and bool
_INT32 = 6
_BOOL = 9


def _unscale(scope: _Scope, t: gs.Tensor, nodes: list) -> tuple[gs.Tensor, float]:
    """Walk up through Div/Mul by constant scalars (appended to `nodes`): (source, factor)."""
    f = 1.0
    while True:
        p = scope.producer(t, ("Div", "Mul"))
        if p is None or len(p.inputs) != 2:
            return t, f
        pairs = [p.inputs] if p.op == "Div" else [p.inputs, p.inputs[::-1]]
        for a, c in pairs:
            v = const_value(c)
            s = _scalar(c)
            if s is not None and v.ndim <= 1 and s != 0 and math.isfinite(s) and const_value(a) is None:
                break
        else:
            return t, f
        f *= 1.0 / s if p.op == "Div" else s
        nodes.append(p)
        t = a


def _shape_entries(scope: _Scope, t: gs.Tensor) -> list | None:
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
        g = scope.producer(un.inputs[0], "Gather") if un is not None and _axes_of(un) == [0] else None
        idx = const_value(g.inputs[1]) if g is not None else None
        sh = scope.producer(g.inputs[0], "Shape") if idx is not None and idx.ndim == 0 else None
        if sh is None or int(g.attrs.get("axis", 0)) != 0 or int(idx) < 0 or sh.attrs.get("start", 0) \
                or sh.attrs.get("end") is not None:
            return None
        entries.append(("dim", sh.inputs[0], int(idx)))
    return entries


def _split_reshape(scope: _Scope, rs: gs.Node, rows: list, per_row: int, tail_len: int) -> list | None:
    """Reshape of a [B, S, ...] tensor to [B, S, *tail] with prod(tail) == per_row: the tail.
    B and S may be spelled 0, Shape(r)[0/1] for r in `rows` (tensors known to start [B, S]),
    their static value, or one -1."""
    entries = _shape_entries(scope, rs.inputs[1]) if len(rs.inputs) == 2 else None
    if entries is None or len(entries) != 2 + tail_len:
        return None
    src = _shape_of(scope, rs.inputs[0]) or []
    wild = 0
    for i, e in enumerate(entries[:2]):
        if isinstance(e, tuple):
            if not any(e[1] is r for r in rows) or e[2] != i:
                return None
        elif e == -1:
            wild += 1
        elif not ((e == 0 and not rs.attrs.get("allowzero", 0)) or (e > 0 and len(src) > i and src[i] == e)):
            return None
    tail = entries[2:]
    if any(isinstance(e, tuple) or e == 0 or e < -1 for e in tail) or wild + tail.count(-1) > 1:
        return None
    known = math.prod(e for e in tail if e > 0)
    if -1 in tail:
        if per_row % known:
            return None
        tail = [per_row // known if e == -1 else e for e in tail]
    if math.prod(tail) != per_row:
        return None
    return tail


def _qkv_branch(scope: _Scope, t: gs.Tensor, perm: list[int], scaled: bool) -> dict | None:
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


def _mask_source(scope: _Scope, m: gs.Tensor) -> tuple[gs.Tensor, float] | None:
    """An additive attention mask (1 - Cast(Unsqueeze(mask, [1, 2]))) * c from an integer or bool
    [B, S] mask: (mask, c)."""
    mul = scope.producer(m, "Mul")
    if mul is None or len(mul.inputs) != 2:
        return None
    for s, c in (mul.inputs, mul.inputs[::-1]):
        value = _scalar(c)
        sub = scope.producer(s, "Sub")
        if value is not None and math.isfinite(value) and const_value(c).ndim <= 4 and sub is not None \
                and _close(_scalar(sub.inputs[0]), 1.0) and const_value(sub.inputs[0]).ndim <= 4:
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
        axes = _axes_of(n) if n.op == "Unsqueeze" else []
        if axes is None:
            return None
        rank = len(dims) + len(axes)
        for a in sorted(a + rank if a < 0 else a for a in axes):
            dims.insert(a, 1)
    if dims != ["B", 1, 1, "S"] or scope.types.get(t.name) not in _INT_TYPES:
        return None
    return t, value


def _zero_one(scope: _Scope, src: gs.Tensor) -> bool:
    """`src` only holds 0 and 1: a bool, or a graph input given that range (--input-range)."""
    if scope.types.get(src.name) == _BOOL:
        return True
    r = scope.ctx.input_ranges.get(src.name)
    return r is not None and any(t is src for t in scope.graph.inputs) \
        and math.ceil(r[0]) >= 0 and math.floor(r[1]) <= 1


def _mask_index(scope: _Scope, src: gs.Tensor) -> gs.Tensor:
    """`src` as int32 (Attention's mask_index type), sharing one Cast between layers."""
    if scope.types.get(src.name) == _INT32:
        return src
    for n in src.outputs:
        if n.op == "Cast" and _std(n) and id(n) not in scope.dead and int(n.attrs.get("to", 0)) == _INT32:
            return n.outputs[0]
    out = gs.Variable(scope.namer(f"{src.name}_int32"), dtype=np.int32)
    scope.graph.nodes.append(gs.Node("Cast", name=scope.namer(f"{src.name}_Cast"), attrs={"to": _INT32},
                                     inputs=[src], outputs=[out]))
    return out


def _row_bias(scope: _Scope, m: gs.Tensor) -> gs.Tensor:
    """The [B, 1, 1, T] additive mask expanded to [B, 1, T, T] (attention_bias wants the query
    axis): Expand(m, Shape(Transpose(m, [0, 1, 3, 2]))), shared between layers."""
    for n in m.outputs:
        if n.op == "Expand" and _std(n) and id(n) not in scope.dead and n.inputs[0] is m:
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


def _pattern_closure(scope: _Scope, nodes: list, keep: gs.Tensor) -> list | None:
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
            if r.op not in _SHAPE_OPS or not _std(r):
                return None
            inside.add(id(r))
            extra.append(r)
            todo.extend(r.outputs)
    return extra


def _fuse_attention(scope: _Scope, sm: gs.Node) -> bool:
    """--target ort: BERT-style multi-head self-attention -> com.microsoft Attention.

    Q, K, V = Add(MatMul(x, W), b) -> Reshape [B, S, N, H] -> Transpose (K to [B, N, H, S]);
    Softmax(Q.K^T / sqrt(H) [+ (1 - mask) * c]) . V -> Transpose -> Reshape [B, S, N*H]. The
    scale may sit on Q and K instead; it must come to 1/sqrt(H). A mask known to hold only 0
    and 1 (bool, or --input-range mask=0:1) becomes mask_index (Cast to int32) with
    mask_filter_value c; any other integer mask keeps its float form, expanded to
    [B, 1, S, S], as attention_bias, which equals the original for every mask value."""
    opset = scope.model.opset() or 0
    if scope.ctx.target != "ort" or sm.op != "Softmax" or \
            int(sm.attrs.get("axis", -1 if opset >= 13 else 1)) not in (-1, 3):
        return False
    nodes = [sm]
    t = sm.inputs[0]
    mask = None
    add = scope.producer(t, "Add")
    if add is not None and len(add.inputs) == 2:
        for s, m in (add.inputs, add.inputs[::-1]):
            mask, mask_add = _mask_source(scope, m), m
            if mask is not None:
                nodes.append(add)
                t = s
                break
        else:
            return False  # another additive bias: not a mask Attention takes
    t, scale = _unscale(scope, t, nodes)
    qk = scope.producer(t, "MatMul")
    if qk is None:
        return False
    nodes.append(qk)
    q = _qkv_branch(scope, qk.inputs[0], [0, 2, 1, 3], True)
    k = _qkv_branch(scope, qk.inputs[1], [0, 2, 3, 1], True)
    pv = scope.sole_consumer(sm.outputs[0])
    if q is None or k is None or pv is None or pv.op != "MatMul" or not _std(pv) or pv.inputs[0] is not sm.outputs[0]:
        return False
    v = _qkv_branch(scope, pv.inputs[1], [0, 2, 1, 3], False)
    tr = scope.sole_consumer(pv.outputs[0])
    if v is None or tr is None or tr.op != "Transpose" or not _std(tr) \
            or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3]:
        return False
    ctx = tr.outputs[0]
    out_rs = [n for n in ctx.outputs
              if n.op == "Reshape" and _std(n) and n.inputs[0] is ctx and id(n) not in scope.dead]
    x = q["x"]
    xs = _shape_of(scope, x)
    if len(out_rs) != 1 or k["x"] is not x or v["x"] is not x or xs is None or len(xs) != 3:
        return False
    heads, dh = q["heads"]
    w_shape = q["w"].shape
    if k["heads"] != [heads, dh] or v["heads"] != [heads, dh] or k["w"].shape != w_shape or v["w"].shape != w_shape:
        return False
    if not _close(scale * q["scale"] * k["scale"], 1 / math.sqrt(dh)):
        return False
    final = _split_reshape(scope, out_rs[0], [ctx, x], heads * dh, 1)
    if final is None:
        return False
    if mask is not None:
        ms = _shape_of(scope, mask[0])
        if ms is None or len(ms) != 2 or any(
                (a == 1 and b != 1) or (isinstance(a, int) and isinstance(b, int) and a != b) for a, b in zip(ms, xs)):
            return False  # a broadcast mask is not a [batch, seq] mask_index
    chain = nodes + [pv, tr] + q["nodes"] + k["nodes"] + v["nodes"]
    if len({id(n) for n in chain}) != len(chain) or any(id(n) in scope.dead for n in chain):
        return False
    live = {id(n) for n in scope.graph.nodes}
    if not all(id(n) in live for n in chain + [out_rs[0]]):
        return False  # a match reaching into an outer graph
    extra = _pattern_closure(scope, chain + [out_rs[0]], out_rs[0].outputs[0])
    if extra is None:
        return False
    weights = np.concatenate([q["w"], k["w"], v["w"]], axis=1)
    bias = np.concatenate([q["b"], k["b"], v["b"]])
    inputs = [x, scope.const("attention_qkv_weight", weights), scope.const("attention_qkv_bias", bias)]
    attrs = {"num_heads": int(heads)}
    if mask is not None and _zero_one(scope, mask[0]):  # mask_index: 0 adds mask_filter_value, 1 adds 0
        inputs.append(_mask_index(scope, mask[0]))
        if mask[1] != -10000.0:
            attrs["mask_filter_value"] = float(mask[1])
    elif mask is not None:  # other values too: keep (1 - mask) * c, exact, as attention_bias
        inputs += [gs.Variable.empty(), gs.Variable.empty(), _row_bias(scope, mask_add)]
    scope.replace_chain(chain + extra, out_rs[0], "Attention", inputs, attrs=attrs, domain=MS)
    return True  # the shape and mask nodes left unread go with the graph's dead nodes (_walk)


@register_pass("fuse-attention")
class FuseAttention(_LocalRewrite):
    """--target ort: BERT-style multi-head self-attention subgraph -> com.microsoft Attention."""

    contract = "float"
    rewrite = staticmethod(_fuse_attention)
    only_target = "ort"
    needs_shapes = True
    anchor = "Softmax"


def _reduce_axes(scope: _Scope, node: gs.Node) -> list[int] | None:
    if node.op != "ReduceMean" or not node.attrs.get("keepdims", 1):
        return None
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = const_value(node.inputs[1])
        return None if v is None else [int(a) for a in v.reshape(-1)]
    return None


def _fuse_layernorm(scope: _Scope, rm: gs.Node) -> bool:
    if rm.op != "ReduceMean" or (scope.model.opset() or 0) < 17:
        return False
    axes = _reduce_axes(scope, rm)
    x = rm.inputs[0]
    if not axes:
        return False
    rank = len(x.shape) if x.shape is not None else None
    if any(a >= 0 for a in axes):
        if rank is None:
            return False
        axes = [a - rank if a >= 0 else a for a in axes]
    axes = sorted(axes)
    if axes != list(range(-len(axes), 0)):
        return False
    mean = rm.outputs[0]
    sub = scope.sole_consumer(mean)
    if sub is None or sub.op != "Sub" or sub.inputs[0] is not x or sub.inputs[1] is not mean:
        return False
    d = sub.outputs[0]
    if d.name in scope.protected or len(d.outputs) != 2:
        return False
    pw = next((n for n in d.outputs if n.op == "Pow"), None)
    dv = next((n for n in d.outputs if n.op == "Div"), None)
    if pw is None or dv is None or pw.inputs[0] is not d or dv.inputs[0] is not d or not _close(_scalar(pw.inputs[1]), 2.0):
        return False
    rm2 = scope.sole_consumer(pw.outputs[0])
    if rm2 is None or _reduce_axes(scope, rm2) is None:
        return False
    axes2 = sorted(a - rank if a >= 0 and rank else a for a in _reduce_axes(scope, rm2))
    if axes2 != axes:
        return False
    add = scope.sole_consumer(rm2.outputs[0])
    if add is None or add.op != "Add":
        return False
    eps = _scalar(_other_input(add, rm2.outputs[0]) or rm2.outputs[0])
    if eps is None or eps < 0:
        return False
    sq = scope.sole_consumer(add.outputs[0])
    if sq is None or sq.op != "Sqrt" or scope.sole_consumer(sq.outputs[0]) is not dv or dv.inputs[1] is not sq.outputs[0]:
        return False
    y = dv.outputs[0]
    nodes = [rm, sub, pw, rm2, add, sq]
    last = dv
    nshape = None
    xv_dtype = None
    gamma = beta = None
    mul = scope.sole_consumer(y)
    if mul is not None and mul.op == "Mul" and _other_input(mul, y) is not None:
        g = const_value(_other_input(mul, y))
        if g is not None and g.ndim <= len(axes) + 8 and g.dtype.kind == "f":
            gamma = g
            nodes.append(dv)
            last = mul
            y = mul.outputs[0]
            addb = scope.sole_consumer(y)
            if addb is not None and addb.op == "Add" and _other_input(addb, y) is not None:
                bv = const_value(_other_input(addb, y))
                if bv is not None and bv.dtype == g.dtype:
                    beta = bv
                    nodes.append(mul)
                    last = addb
    # gamma/beta must only vary over the normalized axes: strip leading 1s.
    def norm(v):
        while v.ndim > len(axes) and v.shape[0] == 1:
            v = v[0]
        return v if v.ndim <= len(axes) else None
    if gamma is None:
        if x.shape is None or any(not isinstance(s, int) for s in x.shape[-len(axes):]):
            return False
        xv_dtype = x.dtype if x.dtype is not None else np.float32
        gamma = np.ones(x.shape[-len(axes):], dtype=xv_dtype)
    gamma = norm(gamma)
    if gamma is None:
        return False
    if beta is not None:
        beta = norm(beta)
        if beta is None:
            return False
    if x.shape is not None and all(isinstance(s, int) for s in x.shape[-len(axes):]):
        nshape = tuple(x.shape[-len(axes):])
    else:
        if gamma.ndim != len(axes) or (beta is not None and beta.shape != gamma.shape):
            return False
        nshape = gamma.shape
    try:
        gamma = np.ascontiguousarray(np.broadcast_to(gamma, nshape))
        beta = np.ascontiguousarray(np.broadcast_to(beta, nshape)) if beta is not None else np.zeros(nshape, gamma.dtype)
    except ValueError:
        return False
    inputs = [x, scope.const("ln_gamma", gamma), scope.const("ln_beta", beta.astype(gamma.dtype))]
    scope.replace_chain(nodes, last, "LayerNormalization", inputs,
                        attrs={"axis": -len(axes), "epsilon": float(eps)})
    return True


@register_pass("fuse-layernorm")
class FuseLayerNorm(_LocalRewrite):
    """Mean/variance LayerNorm subgraph -> LayerNormalization (opset >= 17)."""

    contract = "float"
    rewrite = staticmethod(_fuse_layernorm)


# -- Relu / Clip merging ----------------------------------------------------------------


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(lo, hi) of a Relu or Clip node with constant bounds."""
    if node.op == "Relu":
        return 0.0, math.inf
    if node.op != "Clip":
        return None
    if "min" in node.attrs or "max" in node.attrs or len(node.inputs) == 1:
        return float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))
    lo, hi = -math.inf, math.inf
    if len(node.inputs) > 1 and node.inputs[1].name:
        lo = _scalar(node.inputs[1])
        if lo is None:
            return None
    if len(node.inputs) > 2 and node.inputs[2].name:
        hi = _scalar(node.inputs[2])
        if hi is None:
            return None
    return lo, hi


def _fuse_clip(scope: _Scope, node: gs.Node) -> bool:
    b2 = _clip_bounds(node)
    if b2 is None:
        return False
    x = node.inputs[0]
    prev = scope.producer(x, ("Relu", "Clip"))
    if prev is None or not scope.private(x):
        return False
    b1 = _clip_bounds(prev)
    if b1 is None or (x.dtype is not None and np.dtype(x.dtype).kind != "f"):
        return False
    lo, hi = max(b1[0], b2[0]), min(b1[1], b2[1])
    if lo > hi:
        return False
    src = prev.inputs[0]
    if (lo, hi) == (0.0, math.inf):
        scope.replace_chain([prev], node, "Relu", [src])
        return True
    opset = scope.model.opset() or 0
    dtype = np.dtype(x.dtype) if x.dtype is not None else np.float32
    if opset < 11:
        attrs = {}
        if lo != -math.inf:
            attrs["min"] = lo
        if hi != math.inf:
            attrs["max"] = hi
        scope.replace_chain([prev], node, "Clip", [src], attrs=attrs)
        return True
    inputs = [src, scope.const("clip_min", np.array(lo, dtype)) if lo != -math.inf else gs.Variable.empty()]
    if hi != math.inf:
        inputs.append(scope.const("clip_max", np.array(hi, dtype)))
    scope.replace_chain([prev], node, "Clip", inputs)
    return True


@register_pass("fuse-clip")
class FuseClip(_LocalRewrite):
    """Merge Relu/Clip chains into one Relu or Clip (e.g. Relu -> Clip(0,6) = Clip(0,6))."""

    contract = "exact"
    rewrite = staticmethod(_fuse_clip)
    stat = "merged"


# -- onnxruntime contrib fusion ------------------------------------------------------------


def _ort_activation(node: gs.Node) -> tuple[str, list[float]] | None:
    if node.op in ("Relu", "Sigmoid", "Tanh"):
        return node.op, []
    if node.op == "LeakyRelu":
        return "LeakyRelu", [float(node.attrs.get("alpha", 0.01))]
    if node.op == "HardSigmoid":
        return "HardSigmoid", [float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))]
    if node.op == "Clip":
        b = _clip_bounds(node)
        if b is None:
            return None
        lo, hi = b
        fmax = float(np.finfo(np.float32).max)
        return "Clip", [max(lo, -fmax), min(hi, fmax)]
    return None


def _same_shape(scope: _Scope, add: gs.Node, y: gs.Tensor) -> bool:
    """The residual must have exactly the Conv output's shape (Z is not broadcast)."""
    z = _other_input(add, y)
    if z is None:
        return False
    shapes = scope.shapes
    zs, ys = shapes.get(z.name, z.shape), shapes.get(y.name, y.shape)
    if zs is None or ys is None or len(zs) != len(ys):
        return False
    return all(isinstance(a, (int, str)) and a == b and a not in (0, "", None) for a, b in zip(zs, ys))


def _inferred_shapes(model: Model) -> tuple[dict[str, list], dict[str, int]]:
    """Shapes (ints, shared symbolic names, None) and elem types of every tensor, from
    graphopt.analysis.shapes (onnx shape inference, then onnxruntime's symbolic one)."""
    from graphopt.analysis.shapes import infer_shapes

    try:
        info = infer_shapes(model.to_onnx())
    except Exception as e:  # shape inference is best effort here
        log.debug("shape inference failed: %s", e)
        return {}, {}
    return {k: list(v) for k, v in info.shapes.items() if v is not None}, dict(info.dtypes)


def _fuse_ort_activation(scope: _Scope, node: gs.Node) -> bool:
    if node.op not in ("Conv", "Gemm") or len(node.outputs) != 1:
        return False
    y = node.outputs[0]
    act = scope.sole_consumer(y)
    if act is None or not _std(act):
        return False
    z = None
    pre_act = []
    if node.op == "Conv" and act.op == "Add" and len(node.inputs) == 3 and _same_shape(scope, act, y):
        # Conv + Add(residual) + activation -> FusedConv with the Z (sum) input.
        z = _other_input(act, y)
        nxt = scope.sole_consumer(act.outputs[0])
        if z is None or nxt is None or not _std(nxt) or nxt.inputs[0] is not act.outputs[0]:
            return False
        pre_act, act = [act], nxt
    elif act.inputs[0] is not y:
        return False
    spec = _ort_activation(act)
    if spec is None:
        return False
    dt = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if y.dtype is not None and np.dtype(y.dtype) != np.float32:
        return False
    if dt is not None and dt.dtype != np.float32:
        return False  # the contrib kernels are float32 only
    if dt is None and scope.types.get(node.inputs[1].name) != 1:  # TensorProto.FLOAT
        return False
    name, params = spec
    attrs = dict(node.attrs)
    attrs["activation"] = name
    if node.op == "Conv":
        if params:
            attrs["activation_params"] = [float(p) for p in params]
        inputs = list(node.inputs) + ([z] if z is not None else [])
        scope.replace_chain([node, *pre_act], act, "FusedConv", inputs, attrs=attrs, domain=MS)
    else:
        if name == "Clip":
            return False  # FusedGemm has no Clip bounds attributes we trust across versions
        if params:
            attrs["activation_alpha"] = params[0]
        if len(params) > 1:
            attrs["activation_beta"] = params[1]
        scope.replace_chain([node], act, "FusedGemm", list(node.inputs), attrs=attrs, domain=MS)
    return True


@register_pass("fuse-ort-activation")
class FuseOrtActivation(Pass):
    """--target ort: Conv/Gemm + Relu/Clip/LeakyRelu/Sigmoid/Tanh/HardSigmoid -> com.microsoft FusedConv/FusedGemm."""

    contract = "float"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if ctx.target != "ort":
            return PassResult(False, {"fused": 0})
        if not any(n.op in ("Conv", "Gemm") and _std(n) for n in iter_nodes(model.graph)):
            return PassResult(False, {"fused": 0})  # nothing to fuse: skip shape inference
        n = _walk(model, ctx, _fuse_ort_activation, *_inferred_shapes(model))
        return PassResult(n > 0, {"fused": n})


# -- layout / shape cleanups ------------------------------------------------------------------


def _rewire_identity(scope: _Scope, first: gs.Node, last: gs.Node, src: gs.Tensor) -> None:
    """Drop `first`..`last` (a private chain computing the identity of `src`)."""
    out = last.outputs[0]
    if out.name in scope.protected or why_not_replace(out, src, scope.graph) is not None:
        scope.replace_chain([first], last, "Identity", [src])
        return
    for c in list(out.outputs):
        for i, t in enumerate(c.inputs):
            if t is out:
                c.inputs[i] = src
    scope.kill(first, last)


def _merge_transpose(scope: _Scope, node: gs.Node) -> bool:
    if node.op != "Transpose" or "perm" not in node.attrs:
        return False
    x = node.inputs[0]
    prev = scope.producer(x, "Transpose")
    if prev is None or "perm" not in prev.attrs or not scope.private(x):
        return False
    p1, p2 = list(prev.attrs["perm"]), list(node.attrs["perm"])
    if len(p1) != len(p2):
        return False
    perm = [p1[i] for i in p2]
    src = prev.inputs[0]
    if perm == list(range(len(perm))):
        _rewire_identity(scope, prev, node, src)
    else:
        scope.replace_chain([prev], node, "Transpose", [src], attrs={"perm": perm})
    return True


@register_pass("merge-transpose")
class MergeTranspose(_LocalRewrite):
    """Compose consecutive Transposes; drop the pair if they cancel."""

    contract = "exact"
    rewrite = staticmethod(_merge_transpose)
    stat = "merged"


def _axes_of(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = const_value(node.inputs[1])
        return None if v is None else [int(a) for a in v.reshape(-1)]
    return None


def _merge_reshape(scope: _Scope, node: gs.Node) -> bool:
    if node.op == "Reshape":
        x = node.inputs[0]
        prev = scope.producer(x, "Reshape")
        if prev is None or not scope.private(x):
            return False
        shape = const_value(node.inputs[1])
        if shape is None:
            return False
        if not node.attrs.get("allowzero", 0) and np.any(shape == 0):
            return False  # 0 copies a dim of the intermediate shape
        scope.replace_chain([prev], node, "Reshape", [prev.inputs[0], node.inputs[1]], attrs=dict(node.attrs))
        return True
    if node.op in ("Squeeze", "Unsqueeze"):
        other = "Unsqueeze" if node.op == "Squeeze" else "Squeeze"
        x = node.inputs[0]
        prev = scope.producer(x, other)
        if prev is None or not scope.private(x):
            return False
        a1, a2 = _axes_of(prev), _axes_of(node)
        if not a1 or not a2 or any(a < 0 for a in a1 + a2) or sorted(a1) != sorted(a2):
            return False
        _rewire_identity(scope, prev, node, prev.inputs[0])
        return True
    return False


@register_pass("merge-reshape")
class MergeReshape(_LocalRewrite):
    """Reshape of Reshape -> one Reshape; Squeeze/Unsqueeze pairs on the same axes cancel."""

    contract = "exact"
    rewrite = staticmethod(_merge_reshape)
    stat = "merged"


def _pad_spec(pad: gs.Node, opset: int) -> list[int] | None:
    if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return None
    if opset < 11:
        pads = pad.attrs.get("pads")
        value = float(pad.attrs.get("value", 0.0))
    else:
        if len(pad.inputs) > 3 and pad.inputs[3].name:
            return None  # axes input: keep it simple
        pv = const_value(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if pv is None:
            return None
        pads = [int(p) for p in pv.reshape(-1)]
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2].name:
            v = const_value(pad.inputs[2])
            if v is None or v.size != 1:
                return None
            value = float(v.reshape(()))
    if value != 0.0 or pads is None or any(p < 0 for p in pads):
        return None
    return list(pads)


def _fold_pad(scope: _Scope, node: gs.Node) -> bool:
    if node.op not in ("Conv", "AveragePool") or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return False
    x = node.inputs[0]
    pad = scope.producer(x, "Pad")
    if pad is None or not scope.private(x):
        return False
    pads = _pad_spec(pad, scope.model.opset() or 0)
    if pads is None:
        return False
    r = len(pads) // 2
    if r < 3 or any(pads[i] or pads[r + i] for i in range(2)):
        return False  # batch/channel padding cannot go into the op
    k = r - 2
    old = list(node.attrs.get("pads", [0] * (2 * k)))
    if len(old) != 2 * k:
        return False
    if node.op == "AveragePool":
        if node.attrs.get("ceil_mode", 0):
            return False
        if any(old) and not node.attrs.get("count_include_pad", 0):
            return False
        kernel = list(node.attrs.get("kernel_shape", []))
        if len(kernel) != k:
            return False
        total = [old[i] + pads[2 + i] for i in range(k)] + [old[k + i] + pads[r + 2 + i] for i in range(k)]
        if any(total[i] >= kernel[i % k] for i in range(2 * k)):
            return False  # pools need pads smaller than the kernel
    new = [old[i] + pads[2 + i] for i in range(k)] + [old[k + i] + pads[r + 2 + i] for i in range(k)]
    node.attrs["pads"] = new
    if node.op == "AveragePool":
        node.attrs["count_include_pad"] = 1
    node.inputs[0] = pad.inputs[0]
    scope.kill(pad)
    return True


@register_pass("fold-pad")
class FoldPad(_LocalRewrite):
    """Zero constant Pad on spatial axes -> Conv / AveragePool(count_include_pad=1) pads."""

    contract = "float"  # same sums, but a padded kernel may accumulate in another order
    rewrite = staticmethod(_fold_pad)
    stat = "folded"


# -- opset upgrade ------------------------------------------------------------------------


def _wanted_opset(model: Model, ctx: PassContext) -> int:
    ops = {n.op for n in model.graph.nodes}
    want = 0
    if "HardSigmoid" in ops:
        want = max(want, 14)
    if "ReduceMean" in ops and "Sqrt" in ops:
        want = max(want, 17)
    if "Erf" in ops and ctx.target != "ort":
        want = max(want, 20)
    return want


@register_pass("upgrade-opset")
class UpgradeOpset(Pass):
    """Convert to a newer opset when allowed (--allow-opset-upgrade) and a fusion needs it."""

    contract = "float"
    options = {"version": Option(int, 0, "target opset (0: the lowest that the fusions found need)")}

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if not ctx.allow_opset_upgrade:
            return PassResult(False, {})
        cur = model.opset() or 0
        want = self.version or _wanted_opset(model, ctx)
        if want <= cur:
            return PassResult(False, {})
        import onnx
        from onnx import version_converter
        try:
            converted = version_converter.convert_version(model.to_onnx(), want)
            onnx.checker.check_model(converted)
        except Exception as e:  # the converter fails on assorted models
            log.warning("opset upgrade %d -> %d failed, keeping opset %d: %s", cur, want, cur, str(e).splitlines()[0] if str(e) else e)
            return PassResult(False, {"failed": 1})
        model.replace_with(Model.from_onnx(converted))
        return PassResult(True, {"from": cur, "to": want})


register_group(
    "fuse",
    ["upgrade-opset", "fold-pad", "fold-bn", "fold-affine", "fuse-gemm", "fuse-clip", "fuse-hardswish",
     "fuse-gelu", "fuse-layernorm", "merge-transpose", "merge-reshape", "fuse-ort-activation",
     "fuse-bias-gelu", "fuse-skip-layernorm", "fuse-attention"],
    "fold BatchNorm into Conv/Gemm, fuse activations", fixed_point=True,
)
