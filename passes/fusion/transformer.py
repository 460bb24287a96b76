"""Transformer-block fusions: LayerNormalization from its mean/variance subgraph, and for
--target ort com.microsoft BiasGelu and SkipLayerNormalization (Attention: attention.py)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import register_pass
from graphopt.ir import const_value

from .rule import MS, Rule, close, other_input, scalar, std


def _reduce_axes(node: gs.Node) -> list[int] | None:
    if node.op != "ReduceMean" or not node.attrs.get("keepdims", 1):
        return None
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = const_value(node.inputs[1])
        return None if v is None else [int(a) for a in v.reshape(-1)]
    return None


@register_pass("fuse-layernorm")
class FuseLayerNorm(Rule):
    """Mean/variance LayerNorm subgraph -> LayerNormalization (opset >= 17)."""

    anchor = ("ReduceMean",)
    emits = {None: (17, None)}

    def match(self, scope, rm):
        x, mean = rm.inputs[0], rm.outputs[0]
        sub = scope.sole_consumer(mean)
        if sub is None or sub.op != "Sub" or sub.inputs[0] is not x or sub.inputs[1] is not mean:
            return None
        axes = _reduce_axes(rm)
        if not axes:
            return "ReduceMean axes not constant (or keepdims=0)"
        rank = len(x.shape) if x.shape is not None else None
        if any(a >= 0 for a in axes):
            if rank is None:
                return "input rank unknown"
            axes = [a - rank if a >= 0 else a for a in axes]
        axes = sorted(axes)
        if axes != list(range(-len(axes), 0)):
            return "axes are not the trailing ones"
        d = sub.outputs[0]
        if d.name in scope.protected or len(d.outputs) != 2:
            return "x - mean is read elsewhere"
        pw = next((n for n in d.outputs if n.op == "Pow"), None)
        dv = next((n for n in d.outputs if n.op == "Div"), None)
        if pw is None or dv is None or pw.inputs[0] is not d or dv.inputs[0] is not d or not close(scalar(pw.inputs[1]), 2.0):
            return "not (x - mean) ** 2 and (x - mean) / std"
        rm2 = scope.sole_consumer(pw.outputs[0])
        if rm2 is None or _reduce_axes(rm2) is None:
            return "variance is not a ReduceMean"
        axes2 = sorted(a - rank if a >= 0 and rank else a for a in _reduce_axes(rm2))
        if axes2 != axes:
            return "mean and variance reduce different axes"
        add = scope.sole_consumer(rm2.outputs[0])
        eps = scalar(other_input(add, rm2.outputs[0]) or rm2.outputs[0]) if add is not None and add.op == "Add" else None
        if eps is None or eps < 0:
            return "variance + epsilon not found"
        sq = scope.sole_consumer(add.outputs[0])
        if sq is None or sq.op != "Sqrt" or scope.sole_consumer(sq.outputs[0]) is not dv or dv.inputs[1] is not sq.outputs[0]:
            return "not divided by sqrt(variance + epsilon)"
        y = dv.outputs[0]
        nodes = [rm, sub, pw, rm2, add, sq]
        last = dv
        gamma = beta = None
        mul = scope.sole_consumer(y)
        if mul is not None and mul.op == "Mul" and other_input(mul, y) is not None:
            g = const_value(other_input(mul, y))
            if g is not None and g.ndim <= len(axes) + 8 and g.dtype.kind == "f":
                gamma = g
                nodes.append(dv)
                last = mul
                y = mul.outputs[0]
                addb = scope.sole_consumer(y)
                if addb is not None and addb.op == "Add" and other_input(addb, y) is not None:
                    bv = const_value(other_input(addb, y))
                    if bv is not None and bv.dtype == g.dtype:
                        beta = bv
                        nodes.append(mul)
                        last = addb

        def norm(v):  # gamma/beta must only vary over the normalized axes: strip leading 1s.
            while v.ndim > len(axes) and v.shape[0] == 1:
                v = v[0]
            return v if v.ndim <= len(axes) else None

        static = x.shape is not None and all(isinstance(s, int) for s in x.shape[-len(axes):])
        if gamma is None:
            if not static:
                return "no scale and the normalized shape is not static"
            gamma = np.ones(x.shape[-len(axes):], dtype=x.dtype if x.dtype is not None else np.float32)
        had_beta = beta is not None
        gamma = norm(gamma)
        beta = norm(beta) if had_beta else None
        if gamma is None or (had_beta and beta is None):
            return "scale or shift varies over other axes"
        if static:
            nshape = tuple(x.shape[-len(axes):])
        else:
            if gamma.ndim != len(axes) or (beta is not None and beta.shape != gamma.shape):
                return "scale shape is not the normalized shape"
            nshape = gamma.shape
        try:
            gamma = np.ascontiguousarray(np.broadcast_to(gamma, nshape))
            beta = np.ascontiguousarray(np.broadcast_to(beta, nshape)) if beta is not None else np.zeros(nshape, gamma.dtype)
        except ValueError:
            return "scale or shift does not broadcast to the normalized shape"
        return nodes, last, gamma, beta.astype(gamma.dtype), axes, eps

    def rewrite(self, scope, rm, m):
        nodes, last, gamma, beta, axes, eps = m
        inputs = [rm.inputs[0], scope.const("ln_gamma", gamma), scope.const("ln_beta", beta)]
        scope.replace_chain(nodes, last, "LayerNormalization", inputs,
                            attrs={"axis": -len(axes), "epsilon": float(eps)})


@register_pass("fuse-bias-gelu")
class FuseBiasGelu(Rule):
    """--target ort: Add(x, bias) + Gelu -> com.microsoft BiasGelu."""

    anchor = ("Add",)
    emits = {"ort": (1, None)}
    needs_shapes = True

    def match(self, scope, add):
        gelu = scope.sole_consumer(add.outputs[0])
        if gelu is None or gelu.op != "Gelu" or gelu.domain not in ("", "ai.onnx", None, MS) or len(add.inputs) != 2:
            return None
        if gelu.attrs.get("approximate", "none") != "none":
            return "tanh-approximate Gelu"
        for x, b in (add.inputs, add.inputs[::-1]):
            bv = const_value(b)
            xs = scope.shape(x)
            if bv is None or bv.ndim != 1 or const_value(x) is not None or not xs:
                continue
            if xs[-1] != bv.shape[0] or bv.dtype != np.float32:
                continue
            return gelu, x, b
        return "bias not a float32 [hidden] constant"

    def rewrite(self, scope, add, m):
        gelu, x, b = m
        scope.replace_chain([add], gelu, "BiasGelu", [x, b], domain=MS)


@register_pass("fuse-skip-layernorm")
class FuseSkipLayerNorm(Rule):
    """--target ort: residual Add (+ bias) + LayerNormalization -> com.microsoft SkipLayerNormalization.

    Add(a, b) -> LayerNormalization(last axis), a and b of the same [B, S, H] shape, optionally
    a = Add(MatMul, bias[H]). When the sum is read elsewhere too (the next residual), the
    fused node's 4th output provides it."""

    anchor = ("Add",)
    emits = {"ort": (1, None)}
    needs_shapes = True

    def match(self, scope, add):
        if len(add.inputs) != 2:
            return None
        s = add.outputs[0]
        readers = [n for n in s.outputs if id(n) not in scope.dead]
        lns = [n for n in readers if n.op == "LayerNormalization" and std(n) and n.inputs[0] is s]
        if len(lns) != 1:
            return None
        ln = lns[0]
        a, b = add.inputs
        sa, sb = scope.shape(a), scope.shape(b)
        if sa is None or sb is None or len(sa) != 3 or list(sa) != list(sb) or not isinstance(sa[-1], int):
            return "addends not provably the same [batch, seq, hidden] shape"
        if const_value(a) is not None or const_value(b) is not None:
            return "an addend is constant"
        hidden = int(sa[-1])
        if int(ln.attrs.get("axis", -1)) not in (-1, 2) or int(ln.attrs.get("stash_type", 1)) != 1:
            return "LayerNormalization not over the last axis in float32"
        if any(t.name and (t.outputs or t.name in scope.protected) for t in ln.outputs[1:]):
            return "mean or inv_std_dev is read"
        gamma = const_value(ln.inputs[1]) if len(ln.inputs) > 1 else None
        beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2].name else None
        if gamma is None or gamma.shape != (hidden,) or (beta is not None and beta.shape != (hidden,)) \
                or (len(ln.inputs) > 2 and ln.inputs[2].name and beta is None):
            return "scale/shift not constant [hidden]"
        inputs, skip, bias, absorbed = a, b, None, []
        for x, y in ((a, b), (b, a)):  # a bias Add feeding the sum is absorbed as `bias`
            prod = scope.producer(x, "Add")
            if prod is None or not scope.private(x) or len(prod.inputs) != 2:
                continue
            for p, c in (prod.inputs, prod.inputs[::-1]):
                cv = const_value(c)
                if cv is not None and cv.shape == (hidden,) and const_value(p) is None \
                        and scope.shape(p) is not None and list(scope.shape(p)) == list(sa):
                    inputs, skip, bias, absorbed = p, y, c, [prod]
                    break
            if absorbed:
                break
        others = [n for n in readers if n is not ln]
        return ln, inputs, skip, bias, absorbed, others, beta is not None

    def rewrite(self, scope, add, m):
        ln, inputs, skip, bias, absorbed, others, has_beta = m
        s = add.outputs[0]
        if s.name in scope.protected and not others:
            others = [None]  # a graph output: keep the sum observable
        ins = [inputs, skip, ln.inputs[1], ln.inputs[2] if has_beta else gs.Variable.empty()]
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
