"""Activation fusions: HardSwish and Gelu from their exporter subgraphs, Relu/Clip chains
merged into one Relu or Clip."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import register_pass

from .rule import MS, Rule, close, other_input, scalar


@register_pass("fuse-hardswish")
class FuseHardSwish(Rule):
    """HardSwish (opset >= 14) from its exporter spellings: x * HardSigmoid(x; 1/6, 0.5), and
    x * Clip(x + 3, 0, 6) / 6 with the division by 6 (or product by 1/6) after the product
    (Paddle: Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)) or on the Clip (x * (Clip(x + 3, 0, 6) / 6))."""

    anchor = ("Mul", "Div")
    emits = {None: (14, None)}

    def match(self, scope, last):
        if len(last.inputs) != 2:
            return None
        if last.op == "Mul":
            for x, h in (last.inputs, last.inputs[::-1]):
                hs = scope.producer(h, "HardSigmoid")
                if hs is None or hs.inputs[0] is not x or not scope.private(h):
                    continue
                if close(hs.attrs.get("alpha", 0.2), 1 / 6) and close(hs.attrs.get("beta", 0.5), 0.5):
                    return [hs], x
                return "HardSigmoid alpha/beta are not 1/6, 0.5"
        t = sixth_of(last)
        if t is not None:  # (x * r) / 6
            mul = scope.producer(t, "Mul")
            return None if mul is None or len(mul.inputs) != 2 else relu6_times_x(scope, [mul], t, mul.inputs)
        if last.op == "Mul":  # x * (r / 6)
            for x, s in (last.inputs, last.inputs[::-1]):
                div = scope.producer(s)
                r = sixth_of(div) if div is not None else None
                if r is not None:
                    return relu6_times_x(scope, [div], s, (x, r))
        return None

    def rewrite(self, scope, last, m):
        nodes, x = m
        scope.replace_chain(nodes, last, "HardSwish", [x])


def sixth_of(node: gs.Node) -> gs.Tensor | None:
    """t when `node` is t / 6 or t * (1/6), else None."""
    if node.op == "Div" and len(node.inputs) == 2 and close(scalar(node.inputs[1]), 6.0):
        return node.inputs[0]
    if node.op == "Mul" and len(node.inputs) == 2:
        return next((t for t, k in (node.inputs, node.inputs[::-1]) if close(scalar(k), 1 / 6)), None)
    return None


def relu6_times_x(scope, nodes, t, pair):
    """The nodes of x * Clip(x + 3, 0, 6) (with `nodes`, whose output `t` the anchor reads)
    and x, when one of `pair` is x and the other that Clip; None when no Clip(x + ...) is
    there, a reason when the constants or the sharing of an intermediate do not fit."""
    for x, r in (pair, pair[::-1]):
        clip = scope.producer(r, "Clip")
        add = scope.producer(clip.inputs[0], "Add") if clip is not None and clip.inputs else None
        if add is None or other_input(add, x) is None:
            continue
        if not close(scalar(other_input(add, x)), 3.0) or clip_bounds(clip) != (0.0, 6.0):
            return "not x * Clip(x + 3, 0, 6) / 6"
        if not all(scope.private(u) for u in (t, r, clip.inputs[0])):
            return "an intermediate of x * Clip(x + 3, 0, 6) / 6 is read elsewhere"
        return [add, clip, *nodes], x
    return None


@register_pass("fuse-gelu")
class FuseGelu(Rule):
    """Erf-form GELU subgraph -> Gelu (opset >= 20, or com.microsoft Gelu for --target ort)."""

    anchor = ("Erf",)
    emits = {"ort": (1, None), None: (20, None)}

    def match(self, scope, erf):
        """0.5 * x * (1 + erf(x / sqrt2)) in its exporter spellings."""
        pre = scope.producer(erf.inputs[0], ("Div", "Mul"))
        if pre is None or not scope.private(erf.inputs[0]):
            return None
        x = None
        for cand, c in (pre.inputs, pre.inputs[::-1]):
            v = scalar(c)
            if pre.op == "Div" and cand is pre.inputs[0] and close(v, math.sqrt(2)):
                x = cand
            elif pre.op == "Mul" and close(v, 1 / math.sqrt(2)):
                x = cand
            if x is not None:
                break
        if x is None:
            return "Erf input is not x / sqrt(2)"
        add = scope.sole_consumer(erf.outputs[0])
        if add is None or add.op != "Add" or not close(scalar(other_input(add, erf.outputs[0]) or erf.outputs[0]), 1.0):
            return "Erf is not followed by + 1"
        s = add.outputs[0]
        m1 = scope.sole_consumer(s)
        other = other_input(m1, s) if m1 is not None and m1.op == "Mul" else None
        if other is None:
            return "1 + erf is not multiplied"
        nodes = [pre, erf, add]
        last = None
        if other is x:  # (x * s) * 0.5
            m2 = scope.sole_consumer(m1.outputs[0])
            if m2 is not None and m2.op == "Mul" and close(scalar(other_input(m2, m1.outputs[0]) or s), 0.5):
                nodes.append(m1)
                last = m2
        elif close(scalar(other), 0.5):  # (s * 0.5) * x
            m2 = scope.sole_consumer(m1.outputs[0])
            if m2 is not None and m2.op == "Mul" and other_input(m2, m1.outputs[0]) is x:
                nodes.append(m1)
                last = m2
        else:  # (x * 0.5) * s
            h = scope.producer(other, "Mul")
            if h is not None and scope.private(other) and other_input(h, x) is not None \
                    and close(scalar(other_input(h, x)), 0.5):
                nodes.append(h)
                last = m1
        if last is None:
            return "not 0.5 * x * (1 + erf)"
        return nodes, last, x

    def rewrite(self, scope, erf, m):
        nodes, last, x = m
        domain = None if (scope.model.opset() or 0) >= 20 else MS  # below 20: --target ort only
        scope.replace_chain(nodes, last, "Gelu", [x], domain=domain)


def clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(lo, hi) of a Relu or Clip node with constant bounds."""
    if node.op == "Relu":
        return 0.0, math.inf
    if node.op != "Clip":
        return None
    if "min" in node.attrs or "max" in node.attrs or len(node.inputs) == 1:
        return float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))
    lo, hi = -math.inf, math.inf
    if len(node.inputs) > 1 and node.inputs[1].name:
        lo = scalar(node.inputs[1])
        if lo is None:
            return None
    if len(node.inputs) > 2 and node.inputs[2].name:
        hi = scalar(node.inputs[2])
        if hi is None:
            return None
    return lo, hi


@register_pass("fuse-clip")
class FuseClip(Rule):
    """Merge Relu/Clip chains into one Relu or Clip (e.g. Relu -> Clip(0,6) = Clip(0,6))."""

    contract = "exact"
    anchor = ("Relu", "Clip")
    stat = "merged"

    def match(self, scope, node):
        x = node.inputs[0]
        prev = scope.producer(x, ("Relu", "Clip"))
        if prev is None or not scope.private(x):
            return None
        b1, b2 = clip_bounds(prev), clip_bounds(node)
        if b1 is None or b2 is None:
            return "Clip bounds not constant scalars"
        if x.dtype is not None and np.dtype(x.dtype).kind != "f":
            return "not a float tensor"
        lo, hi = max(b1[0], b2[0]), min(b1[1], b2[1])
        if lo > hi:
            return "the ranges do not overlap"
        return prev, lo, hi

    def rewrite(self, scope, node, m):
        prev, lo, hi = m
        x, src = node.inputs[0], prev.inputs[0]
        if (lo, hi) == (0.0, math.inf):
            scope.replace_chain([prev], node, "Relu", [src])
            return
        dtype = np.dtype(x.dtype) if x.dtype is not None else np.float32
        if (scope.model.opset() or 0) < 11:
            attrs = {}
            if lo != -math.inf:
                attrs["min"] = lo
            if hi != math.inf:
                attrs["max"] = hi
            scope.replace_chain([prev], node, "Clip", [src], attrs=attrs)
            return
        inputs = [src, scope.const("clip_min", np.array(lo, dtype)) if lo != -math.inf else gs.Variable.empty()]
        if hi != math.inf:
            inputs.append(scope.const("clip_max", np.array(hi, dtype)))
        scope.replace_chain([prev], node, "Clip", inputs)
