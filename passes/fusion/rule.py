"""The rule framework the fusion families are written in.

A rule is a `Rule` subclass registered as a pass. It declares once:

    anchor    the ops a match starts from (every match contains one of them)
    emits     {target: (min_opset, max_opset)}: the targets it may emit for and the opsets
              its output needs; None is "any target". A target missing from it leaves the
              rule out (stats {stat: 0}); an opset outside the range refuses each candidate
              with "needs opset >= N".
    match     match(scope, node) -> None | str | match: None when the pattern's first level
              does not start at this anchor node (not a candidate), a short human reason when
              the candidate is refused, else whatever `rewrite` needs. It never mutates.
    check     check(scope, node, match) -> None | reason (optional, after match)
    rewrite   rewrite(scope, node, match): the graph surgery

`Rule.run` walks every (sub)graph, counts matches that fired and refusals by reason:
{"fused": 2, "refused": 12, "reasons": {"mask shape not provably [batch, seq]": 12}}.

A rewrite only fires when the intermediate tensors it removes have exactly one consumer,
are not graph outputs and are not read by a subgraph (`Scope.sole_consumer`). The last node
of a matched chain hands its output tensor over to the fused node (`Scope.replace_chain`),
so names, consumers and graph outputs are kept; producers a rewrite leaves unread are
removed with the graph's dead nodes.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import Model, Pass, PassContext, PassResult
from graphopt.ir import const_value, fresh_namer, iter_graphs, iter_nodes, observed_names, remove_dead_nodes

log = logging.getLogger(__name__)

MS = "com.microsoft"


class Scope:
    """Facts about one graph a rule needs: which tensors must stay observable, inferred
    shapes and types (rules with `needs_shapes`), and the nodes already rewritten away."""

    def __init__(self, graph: gs.Graph, model: Model, ctx: PassContext,
                 shapes: dict | None = None, types: dict | None = None):
        self.graph = graph
        self.model = model
        self.ctx = ctx
        # Graph outputs and values nested subgraphs read by name (ir's scope rules).
        self.protected = observed_names(graph)
        self.namer = fresh_namer(graph)
        self.dead: set[int] = set()
        self.shapes: dict[str, list] = shapes or {}
        self.types: dict[str, int] = types or {}  # onnx TensorProto elem type enums

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
        if id(node) in self.dead or (op is not None and node.op not in ops(op)) or not std(node):
            return None
        return node

    def shape(self, t: gs.Tensor) -> list | None:
        """The inferred shape of `t`, else the one it carries."""
        s = self.shapes.get(t.name)
        return list(s) if s is not None else (list(t.shape) if t.shape is not None else None)

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


class Rule(Pass):
    """A declared local rewrite (see the module docstring); subclasses are registered with
    `register_pass(name)` and set `anchor`, and implement `match` and `rewrite`."""

    contract = "float"
    anchor: ClassVar[tuple[str, ...]] = ()
    emits: ClassVar[dict[str | None, tuple[int, int | None]]] = {None: (1, None)}
    stat: ClassVar[str] = "fused"
    needs_shapes: ClassVar[bool] = False  # run shape inference first (scope.shapes / scope.types)

    def match(self, scope: Scope, node: gs.Node) -> Any:
        raise NotImplementedError

    def check(self, scope: Scope, node: gs.Node, m: Any) -> str | None:
        return None

    def rewrite(self, scope: Scope, node: gs.Node, m: Any) -> None:
        raise NotImplementedError

    def opset_refusal(self, model: Model, ctx: PassContext) -> str | None | bool:
        """False when the rule does not emit for ctx.target, else the refusal every
        candidate gets for the model's opset (None: the opset is fine)."""
        span = self.emits.get(ctx.target, self.emits.get(None))
        if span is None:
            return False
        opset, (lo, hi) = model.opset() or 0, span
        if opset < lo:
            return f"needs opset >= {lo}"
        if hi is not None and opset > hi:
            return f"needs opset <= {hi}"
        return None

    def candidates(self, model: Model, ctx: PassContext):
        """(scope, its candidates) for each (sub)graph; the candidates, read lazily, are
        (node, match) for every live anchor node whose `match` is not None (a reason or a
        match), so a rewrite made between two of them is seen by the next."""
        shapes, types = inferred_shapes(model) if self.needs_shapes else ({}, {})
        for graph in list(iter_graphs(model.graph)):
            scope = Scope(graph, model, ctx, shapes, types)
            yield scope, self._matches(scope)

    def _matches(self, scope: Scope):
        for node in list(scope.graph.nodes):
            if id(node) in scope.dead or node.op not in self.anchor or not std(node):
                continue
            m = self.match(scope, node)
            if m is not None:
                yield node, m

    def found(self, model: Model, ctx: PassContext) -> bool:
        """Whether some candidate would be rewritten at an opset the rule emits for."""
        return any(not isinstance(m, str) and not self.check(scope, node, m)
                   for scope, matches in self.candidates(model, ctx) for node, m in matches)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        too_old = self.opset_refusal(model, ctx)
        if too_old is False or not any(n.op in self.anchor and std(n) for n in iter_nodes(model.graph)):
            return PassResult(False, {self.stat: 0})  # nothing to match: skip shape inference
        fired, reasons = 0, Counter()
        for scope, matches in self.candidates(model, ctx):
            here = 0
            for node, m in matches:
                why = m if isinstance(m, str) else too_old or self.check(scope, node, m)
                if why:
                    reasons[why] += 1
                    continue
                self.rewrite(scope, node, m)
                here += 1
            scope.finish()
            if here:
                remove_dead_nodes(scope.graph)
            fired += here
        stats: dict[str, Any] = {self.stat: fired, "refused": sum(reasons.values())}
        if reasons:
            stats["reasons"] = dict(reasons.most_common())
            log.debug("%s: %d refused: %s", self.name, stats["refused"], stats["reasons"])
        return PassResult(fired > 0, stats)


# -- small matching helpers the families share ---------------------------------------------


def ops(op) -> tuple:
    return (op,) if isinstance(op, str) else tuple(op)


def std(node: gs.Node) -> bool:
    return node.domain in ("", "ai.onnx", None)


def scalar(t: gs.Tensor) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1 or v.dtype.kind != "f":
        return None
    return float(v.reshape(()))


def other_input(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    """For a binary op with `t` as one input, the other input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is t and b is not t:
        return b
    if b is t and a is not t:
        return a
    return None


def close(v: float | None, target: float, rtol: float = 1e-4) -> bool:
    return v is not None and abs(v - target) <= rtol * abs(target) + 1e-7


def axes_of(node: gs.Node) -> list[int] | None:
    """The constant axes of a Squeeze/Unsqueeze/Reduce node (attribute or input)."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = const_value(node.inputs[1])
        return None if v is None else [int(a) for a in v.reshape(-1)]
    return None


def inferred_shapes(model: Model) -> tuple[dict[str, list], dict[str, int]]:
    """Shapes (ints, shared symbolic names, None) and elem types of every tensor, from
    graphopt.analysis.shapes (onnx shape inference, then onnxruntime's symbolic one)."""
    from graphopt.analysis.shapes import infer_shapes

    try:
        info = infer_shapes(model.to_onnx())
    except Exception as e:  # shape inference is best effort here
        log.debug("shape inference failed: %s", e)
        return {}, {}
    return {k: list(v) for k, v in info.shapes.items() if v is not None}, dict(info.dtypes)
