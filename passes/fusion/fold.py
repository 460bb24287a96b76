"""Folds into a producer's or consumer's constants: BatchNorm and per-channel Mul/Add into
Conv/ConvTranspose/Gemm weights, MatMul + bias into Gemm, zero Pad into Conv/AveragePool pads."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import register_pass
from graphopt.ir import const_value

from .rule import Rule, Scope, other_input, std


def _bn_params(bn: gs.Node):
    if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
        return None
    vals = [const_value(t) for t in bn.inputs[1:5]]
    if len(vals) != 4 or any(v is None for v in vals):
        return None
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _channel_affine(prod: gs.Node, s: np.ndarray, t: np.ndarray, op: str | None = None):
    """The weight and bias that make producer (Conv / ConvTranspose / Gemm; `op` when a MatMul
    is to become a Gemm) compute y*s + t, s and t per output channel (1-D of length C or
    broadcastable scalars): (weight, bias, reset_beta), or None if it cannot."""
    op = op or prod.op
    attrs = prod.attrs if op == prod.op else {}
    w = const_value(prod.inputs[1])
    if w is None or w.dtype.kind != "f" or w.ndim < 2:
        return None
    has_b = len(prod.inputs) > 2 and prod.inputs[2].name
    b = const_value(prod.inputs[2]) if has_b else None
    if has_b and b is None:
        return None
    w64, reset_beta = w.astype(np.float64), False
    if op == "Conv":
        c = w.shape[0]
        s = np.broadcast_to(s, (c,)) if s.size in (1, c) else None
        if s is None:
            return None
        w64 = w64 * s.reshape((c,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        g = int(attrs.get("group", 1))
        cpg = w.shape[1]
        c = cpg * g
        s = np.broadcast_to(s, (c,)) if s.size in (1, c) else None
        if s is None:
            return None
        shaped = w64.reshape((g, w.shape[0] // g, cpg) + w.shape[2:])
        w64 = (shaped * s.reshape((g, 1, cpg) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif op == "Gemm":
        if w.ndim != 2:
            return None
        trans_b = int(attrs.get("transB", 0))
        c = w.shape[0] if trans_b else w.shape[1]
        s = np.broadcast_to(s, (c,)) if s.size in (1, c) else None
        if s is None:
            return None
        w64 = w64 * (s.reshape(c, 1) if trans_b else s.reshape(1, c))
        if b is not None:
            beta = float(attrs.get("beta", 1.0))
            if b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or b.shape[-1:] not in ((c,), (1,)) and b.ndim:
                return None
            b = np.broadcast_to(b.reshape(-1), (c,)).astype(np.float64) * beta
            reset_beta = True
    else:
        return None
    t = np.broadcast_to(t, (c,))
    b64 = (b.astype(np.float64).reshape(-1) if b is not None else np.zeros(c)) * s + t
    if b64.shape != (c,):
        return None
    return w64.astype(w.dtype), b64.astype(w.dtype), reset_beta


def _set_weights(scope: Scope, node: gs.Node, w: np.ndarray, b: np.ndarray) -> None:
    node.inputs[1] = scope.const(node.inputs[1].name + "_fused", w)
    bias = scope.const(node.inputs[1].name + "_bias", b)
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)


def _apply_affine(scope: Scope, prod: gs.Node, new, last: gs.Node) -> None:
    """Give `prod` the folded weights and `last`'s output (`last` is removed)."""
    w, b, reset_beta = new
    if reset_beta:
        prod.attrs["beta"] = 1.0
    _set_weights(scope, prod, w, b)
    out = last.outputs[0]
    scope.kill(last)
    prod.outputs[0] = out


def _zero_padding(conv: gs.Node, w: np.ndarray) -> bool:
    """True when the Conv reads no padding (so a per-channel shift of its input is exact)."""
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in w.shape[2:])  # SAME never pads a 1x1 kernel
    return auto_pad == "VALID" or not any(conv.attrs.get("pads", []))


def _bn_forward(scope: Scope, bn: gs.Node):
    """BatchNormalization feeding a Conv (zero padding) or a Gemm: y = x*s + t goes into the
    consumer's weights (scaled along their input channels) and bias (plus W applied to t)."""
    y = bn.outputs[0] if len(bn.outputs) == 1 else None
    cons = scope.sole_consumer(y) if y is not None else None
    if cons is None or not std(cons) or cons.op not in ("Conv", "Gemm") or cons.inputs[0] is not y:
        return None
    params = _bn_params(bn)
    w = const_value(cons.inputs[1]) if len(cons.inputs) > 1 else None
    has_b = len(cons.inputs) > 2 and cons.inputs[2].name
    b = const_value(cons.inputs[2]) if has_b else None
    if params is None:
        return "BatchNormalization parameters not constant (or training mode)"
    if w is None or w.dtype.kind != "f" or (has_b and b is None):
        return "consumer weights not constant float"
    s, t = params
    w64 = w.astype(np.float64)
    if cons.op == "Conv":
        if w.ndim < 3 or not _zero_padding(cons, w):
            return "the following Conv pads its input"
        o, cpg = w.shape[0], w.shape[1]
        g = int(cons.attrs.get("group", 1))
        if s.size != cpg * g or o % g:
            return "channel count differs from the Conv's input channels"
        idx = (np.arange(o) // (o // g))[:, None] * cpg + np.arange(cpg)[None, :]  # [O, C/g] -> channel
        extra = (1,) * (w.ndim - 2)
        new_w = w64 * s[idx].reshape(idx.shape + extra)
        shift = (w64 * t[idx].reshape(idx.shape + extra)).reshape(o, -1).sum(axis=1)
        new_b = (b.astype(np.float64).reshape(-1) if b is not None else np.zeros(o)) + shift
        if new_b.shape != (o,):
            return "Conv bias is not per output channel"
    else:  # Gemm: Y = alpha * A' B + beta * C with A' = A*s + t on A's columns
        if w.ndim != 2 or int(cons.attrs.get("transA", 0)):
            return "the following Gemm transposes A"
        trans_b = int(cons.attrs.get("transB", 0))
        k = w.shape[1] if trans_b else w.shape[0]
        n = w.shape[0] if trans_b else w.shape[1]
        if s.size != k:
            return "channel count differs from the Gemm's K"
        new_w = w64 * (s.reshape(1, k) if trans_b else s.reshape(k, 1))
        alpha, beta = float(cons.attrs.get("alpha", 1.0)), float(cons.attrs.get("beta", 1.0))
        shift = alpha * ((w64 @ t) if trans_b else (t @ w64))
        if b is not None and (b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or b.shape[-1:] not in ((n,), (1,))):
            return "Gemm bias is not per output column"
        base = np.broadcast_to(b.reshape(-1), (n,)).astype(np.float64) * beta if b is not None else np.zeros(n)
        new_b = base + shift
    return "forward", cons, new_w.astype(w.dtype), new_b.astype(w.dtype)


@register_pass("fold-bn")
class FoldBatchNorm(Rule):
    """Fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul, or the following zero-padded Conv / Gemm."""

    anchor = ("BatchNormalization",)
    stat = "folded"

    def match(self, scope, bn):
        x = bn.inputs[0]
        prod = scope.producer(x, ("Conv", "ConvTranspose", "Gemm", "MatMul"))
        if prod is None or not scope.private(x) or len(prod.outputs) != 1:
            return _bn_forward(scope, bn)
        params = _bn_params(bn)
        if params is None:
            return "BatchNormalization parameters not constant (or training mode)"
        op = prod.op
        if op == "MatMul":  # BatchNorm1d after a bias-free Linear on 2-D input: becomes a Gemm.
            w, a = const_value(prod.inputs[1]), prod.inputs[0]
            if w is None or w.ndim != 2 or a.shape is None or len(a.shape) != 2:
                return "MatMul is not 2-D input times a constant 2-D weight"
            op = "Gemm"
        elif op in ("Conv", "ConvTranspose") and x.shape is not None and len(x.shape) < 3:
            return "Conv output rank below 3"
        new = _channel_affine(prod, *params, op=op)
        return ("back", prod, op, new) if new is not None else "weights not constant float per output channel"

    def rewrite(self, scope, bn, m):
        if m[0] == "forward":
            _, cons, new_w, new_b = m
            if cons.op == "Gemm":
                cons.attrs["beta"] = 1.0
            cons.inputs[0] = bn.inputs[0]
            _set_weights(scope, cons, new_w, new_b)
            scope.kill(bn)
            return
        _, prod, op, new = m
        if op != prod.op:
            prod.op = op
            prod.attrs.clear()
        _apply_affine(scope, prod, new, bn)


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


@register_pass("fold-affine")
class FoldAffine(Rule):
    """Fold Mul/Add by per-output-channel or scalar constants into Conv/Gemm weights and bias."""

    anchor = ("Mul", "Add")
    stat = "folded"

    def match(self, scope, node):
        if len(node.inputs) != 2:
            return None
        why = None
        for x, c in (node.inputs, node.inputs[::-1]):
            prod = scope.producer(x, ("Conv", "ConvTranspose", "Gemm"))
            v = const_value(c)
            if prod is None or v is None or v.dtype.kind != "f" or not scope.private(x):
                continue
            w = const_value(prod.inputs[1])
            if w is None or w.dtype != v.dtype:
                why = "weight not constant of the same dtype"
                continue
            rank = 2 if prod.op == "Gemm" else (w.ndim if w.ndim >= 3 else None)
            vec = _channel_vector(v, rank, 1) if rank is not None or v.size == 1 else None
            if vec is None or (rank is not None and v.ndim > rank):
                why = "constant not per output channel"
                continue
            vec = vec.astype(np.float64)
            new = (_channel_affine(prod, vec, np.zeros(1)) if node.op == "Mul"
                   else _channel_affine(prod, np.ones(1), vec))
            if new is not None:
                return prod, new
            why = "weights cannot take the constant"
        return why

    def rewrite(self, scope, node, m):
        prod, new = m
        _apply_affine(scope, prod, new, node)


@register_pass("fuse-gemm")
class FuseGemm(Rule):
    """MatMul(2-D A, constant 2-D B) + Add(1-D bias) -> Gemm."""

    anchor = ("MatMul",)

    def match(self, scope, mm):
        a, bt = mm.inputs
        y = mm.outputs[0]
        add = scope.sole_consumer(y)
        if add is None or add.op != "Add" or not std(add):
            return None
        w = const_value(bt)
        if a.shape is None or len(a.shape) != 2:
            return "input not 2-D (Gemm is 2-D only)"
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            return "weight not a constant 2-D float"
        c = other_input(add, y)
        cv = const_value(c) if c is not None else None
        if cv is None or cv.dtype != w.dtype:
            return "bias not a constant of the weight's dtype"
        n = w.shape[1]
        if not (cv.shape == (n,) or cv.shape == (1, n)):
            return "bias not [N] or [1, N]"
        return add, c, cv.reshape(n)

    def rewrite(self, scope, mm, m):
        add, c, bias = m
        scope.replace_chain([mm], add, "Gemm", [mm.inputs[0], mm.inputs[1], scope.const(c.name + "_gemm", bias)])


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


@register_pass("fold-pad")
class FoldPad(Rule):
    """Zero constant Pad on spatial axes -> Conv / AveragePool(count_include_pad=1) pads."""

    contract = "float"  # same sums, but a padded kernel may accumulate in another order
    anchor = ("Conv", "AveragePool")
    stat = "folded"

    def match(self, scope, node):
        x = node.inputs[0]
        pad = scope.producer(x, "Pad")
        if pad is None or not scope.private(x):
            return None
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "auto_pad is set"
        pads = _pad_spec(pad, scope.model.opset() or 0)
        if pads is None:
            return "Pad is not a constant zero padding"
        r = len(pads) // 2
        if r < 3 or any(pads[i] or pads[r + i] for i in range(2)):
            return "pads the batch or channel axis"
        k = r - 2
        old = list(node.attrs.get("pads", [0] * (2 * k)))
        if len(old) != 2 * k:
            return "pads length differs from the kernel rank"
        new = [old[i] + pads[2 + i] for i in range(k)] + [old[k + i] + pads[r + 2 + i] for i in range(k)]
        if node.op == "AveragePool":
            if node.attrs.get("ceil_mode", 0):
                return "AveragePool with ceil_mode"
            if any(old) and not node.attrs.get("count_include_pad", 0):
                return "AveragePool pads already, without count_include_pad"
            kernel = list(node.attrs.get("kernel_shape", []))
            if len(kernel) != k or any(new[i] >= kernel[i % k] for i in range(2 * k)):
                return "total padding not smaller than the kernel"
        return pad, new

    def rewrite(self, scope, node, m):
        pad, new = m
        node.attrs["pads"] = new
        if node.op == "AveragePool":
            node.attrs["count_include_pad"] = 1
        node.inputs[0] = pad.inputs[0]
        scope.kill(pad)
