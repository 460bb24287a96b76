"""Layout cleanups: consecutive Transposes composed (or dropped when they cancel), Reshape of
Reshape merged, Squeeze/Unsqueeze pairs on the same axes cancelled."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import register_pass
from graphopt.ir import const_value, why_not_replace

from .rule import Rule, Scope, axes_of


def _rewire_identity(scope: Scope, first: gs.Node, last: gs.Node, src: gs.Tensor) -> None:
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


@register_pass("merge-transpose")
class MergeTranspose(Rule):
    """Compose consecutive Transposes; drop the pair if they cancel."""

    contract = "exact"
    anchor = ("Transpose",)
    stat = "merged"

    def match(self, scope, node):
        x = node.inputs[0]
        prev = scope.producer(x, "Transpose")
        if prev is None or not scope.private(x):
            return None
        if "perm" not in node.attrs or "perm" not in prev.attrs:
            return "perm not given"
        p1, p2 = list(prev.attrs["perm"]), list(node.attrs["perm"])
        if len(p1) != len(p2):
            return "perm lengths differ"
        return prev, [p1[i] for i in p2]

    def rewrite(self, scope, node, m):
        prev, perm = m
        if perm == list(range(len(perm))):
            _rewire_identity(scope, prev, node, prev.inputs[0])
        else:
            scope.replace_chain([prev], node, "Transpose", [prev.inputs[0]], attrs={"perm": perm})


@register_pass("merge-reshape")
class MergeReshape(Rule):
    """Reshape of Reshape -> one Reshape; Squeeze/Unsqueeze pairs on the same axes cancel."""

    contract = "exact"
    anchor = ("Reshape", "Squeeze", "Unsqueeze")
    stat = "merged"

    def match(self, scope, node):
        x = node.inputs[0]
        kind = node.op if node.op == "Reshape" else ("Unsqueeze" if node.op == "Squeeze" else "Squeeze")
        prev = scope.producer(x, kind)
        if prev is None or not scope.private(x):
            return None
        if node.op == "Reshape":
            shape = const_value(node.inputs[1])
            if shape is None:
                return "shape not constant"
            if not node.attrs.get("allowzero", 0) and np.any(shape == 0):
                return "shape has 0 (copies a dim of the intermediate shape)"
            return prev
        a1, a2 = axes_of(prev), axes_of(node)
        if not a1 or not a2 or any(a < 0 for a in a1 + a2) or sorted(a1) != sorted(a2):
            return "axes not constant, negative or different"
        return prev

    def rewrite(self, scope, node, prev):
        if node.op == "Reshape":
            scope.replace_chain([prev], node, "Reshape", [prev.inputs[0], node.inputs[1]], attrs=dict(node.attrs))
        else:
            _rewire_identity(scope, prev, node, prev.inputs[0])
