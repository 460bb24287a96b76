"""onnxruntime-only contrib fusions (--target ort): Conv/Gemm + activation (and Conv + residual
Add + activation) -> com.microsoft FusedConv / FusedGemm."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import register_pass
from graphopt.ir import const_value

from .activation import clip_bounds
from .rule import MS, Rule, Scope, other_input, std


def _ort_activation(node: gs.Node) -> tuple[str, list[float]] | None:
    if node.op in ("Relu", "Sigmoid", "Tanh"):
        return node.op, []
    if node.op == "LeakyRelu":
        return "LeakyRelu", [float(node.attrs.get("alpha", 0.01))]
    if node.op == "HardSigmoid":
        return "HardSigmoid", [float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))]
    if node.op == "Clip":
        b = clip_bounds(node)
        if b is None:
            return None
        lo, hi = b
        fmax = float(np.finfo(np.float32).max)
        return "Clip", [max(lo, -fmax), min(hi, fmax)]
    return None


def _same_shape(scope: Scope, add: gs.Node, y: gs.Tensor) -> bool:
    """The residual must have exactly the Conv output's shape (Z is not broadcast)."""
    z = other_input(add, y)
    if z is None:
        return False
    zs, ys = scope.shapes.get(z.name, z.shape), scope.shapes.get(y.name, y.shape)
    if zs is None or ys is None or len(zs) != len(ys):
        return False
    return all(isinstance(a, (int, str)) and a == b and a not in (0, "", None) for a, b in zip(zs, ys))


@register_pass("fuse-ort-activation")
class FuseOrtActivation(Rule):
    """--target ort: Conv/Gemm + Relu/Clip/LeakyRelu/Sigmoid/Tanh/HardSigmoid -> com.microsoft FusedConv/FusedGemm."""

    anchor = ("Conv", "Gemm")
    emits = {"ort": (1, None)}
    needs_shapes = True

    def match(self, scope, node):
        if len(node.outputs) != 1:
            return None
        y = node.outputs[0]
        act = scope.sole_consumer(y)
        if act is None or not std(act):
            return None
        z = None
        if node.op == "Conv" and act.op == "Add" and len(node.inputs) == 3 and _same_shape(scope, act, y):
            # Conv + Add(residual) + activation -> FusedConv with the Z (sum) input.
            z = other_input(act, y)
            nxt = scope.sole_consumer(act.outputs[0])
            if z is None or nxt is None or not std(nxt) or nxt.inputs[0] is not act.outputs[0]:
                return None
            pre_act, act = [act], nxt
        elif act.inputs[0] is not y:
            return None
        else:
            pre_act = []
        spec = _ort_activation(act)
        return None if spec is None else (act, pre_act, z, spec)

    def check(self, scope, node, m):
        y, dt = node.outputs[0], const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if (y.dtype is not None and np.dtype(y.dtype) != np.float32) or (dt is not None and dt.dtype != np.float32) \
                or (dt is None and scope.types.get(node.inputs[1].name) != 1):  # TensorProto.FLOAT
            return "not float32 (the contrib kernels are float32 only)"
        if node.op == "Gemm" and m[3][0] == "Clip":
            return "FusedGemm has no Clip bounds attributes we trust across versions"
        return None

    def rewrite(self, scope, node, m):
        act, pre_act, z, (name, params) = m
        attrs = dict(node.attrs)
        attrs["activation"] = name
        if node.op == "Conv":
            if params:
                attrs["activation_params"] = [float(p) for p in params]
            inputs = list(node.inputs) + ([z] if z is not None else [])
            scope.replace_chain([node, *pre_act], act, "FusedConv", inputs, attrs=attrs, domain=MS)
            return
        if params:
            attrs["activation_alpha"] = params[0]
        if len(params) > 1:
            attrs["activation_beta"] = params[1]
        scope.replace_chain([node], act, "FusedGemm", list(node.inputs), attrs=attrs, domain=MS)
