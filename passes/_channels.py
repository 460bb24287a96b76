"""Channel dependency analysis for structured pruning (used by pass `prune`): the records.

Every prunable producer (a *root*: Conv with group=1, Gemm, MatMul with a constant
weight) creates one *element* per output channel. Each tensor derived from roots gets a
*layout*: the element of every position along its channel axis. `Analyzer` walks the
graph in topological order and hands each node to its op's rule
(passes/_channels_ops.py says how each op moves, couples or blocks channels); the rules
record what pruning must edit: root weights (`Root`), consumer weights (`Sink`), weights
and parameters to slice (`Slice`) and non-weight edits (`Fixup`).

A union-find over elements yields the removable *units* (sets of coupled channels).
A unit is *blocked* when any of its elements reaches a graph output, a subgraph or an
op this analysis does not understand; blocked units are never removed and the reasons
are counted for the pass statistics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.ir import const_value, iter_graphs, outer_names_used, subgraphs_of

# ------------------------------------------------------------------------------ weights


class WeightRef:
    """A constant input of a node that the pass may rewrite (slice or replace)."""

    def __init__(self, node: gs.Node, index: int):
        self.node = node
        self.index = index

    @property
    def tensor(self) -> gs.Tensor:
        return self.node.inputs[self.index]

    def get(self) -> np.ndarray:
        return read_constant(self.tensor)

    def set(self, value: np.ndarray, namer: Callable[[str], str]) -> None:
        t = self.tensor
        if isinstance(t, gs.Constant):
            value = np.ascontiguousarray(value)
            t.values = value  # single use (checked by the analysis): edit in place, keep the name
            return
        producer = t.inputs[0] if len(t.inputs) == 1 else None
        if producer is not None and producer.op == "ConstantOfShape" and value.size:
            shape_t = producer.inputs[0]
            if (isinstance(shape_t, gs.Constant) and len(shape_t.outputs) == 1
                    and is_uniform(value) and is_uniform(read_constant(t))
                    and value.reshape(-1)[0] == read_constant(t).reshape(-1)[0]):
                shape_t.values = np.array(value.shape, dtype=np.int64)  # stays a compact fill
                t.shape = list(value.shape)
                return
        self.node.inputs[self.index] = gs.Constant(namer(t.name or "w"), np.ascontiguousarray(value))



def read_constant(t: gs.Tensor) -> np.ndarray | None:
    v = const_value(t)
    if v is not None:
        return np.asarray(v)
    # Light-zoo style weights: ConstantOfShape with a constant shape.
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "ConstantOfShape":
        node = t.inputs[0]
        shape = const_value(node.inputs[0]) if node.inputs else None
        if shape is None:
            return None
        fill = node.attrs.get("value")
        fill_v = np.asarray(fill.values).reshape(-1)[0] if isinstance(fill, gs.Constant) else np.float32(0)
        # A zero-copy view: light-zoo FC weights are hundreds of MB when materialized.
        return np.broadcast_to(np.asarray(fill_v), [int(s) for s in shape])
    # Unsqueeze/Reshape of a constant (BN written as Mul/Add by unsqueezed vectors).
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op in ("Unsqueeze", "Reshape"):
        node = t.inputs[0]
        src = read_constant(node.inputs[0]) if node.inputs else None
        if src is None:
            return None
        if node.op == "Unsqueeze":
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1:
                axes = const_value(node.inputs[1])
            if axes is None:
                return None
            rank = src.ndim + len(np.asarray(axes).reshape(-1))
            out = np.asarray(src)
            for ax in sorted(int(a) % rank for a in np.asarray(axes).reshape(-1)):
                out = np.expand_dims(out, ax)
            return out
        shape = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if shape is None or int(node.attrs.get("allowzero", 0)):
            return None
        shape = [src.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(np.asarray(shape).reshape(-1))]
        try:
            return np.asarray(src).reshape(shape)
        except ValueError:
            return None
    return None


def is_uniform(v: np.ndarray) -> bool:
    """All elements equal (cheap for broadcast views)."""
    if v.size == 0:
        return True
    if all(st == 0 for st in v.strides):
        return True
    flat = v.reshape(-1)
    return bool(np.all(flat == flat[0]))


def compress(value: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """np.compress that keeps broadcast (uniform) views cheap."""
    if value.ndim and all(st == 0 for st in value.strides):
        shape = list(value.shape)
        shape[axis] = int(mask.sum())
        return np.broadcast_to(value.reshape(-1)[:1].reshape([1] * value.ndim), shape)
    return np.compress(mask, value, axis=axis)



# ------------------------------------------------------------------------------ records


@dataclass
class Layout:
    elems: np.ndarray  # element id per position along the channel axis
    axis: int  # the channel axis in this tensor


@dataclass
class Root:
    node: gs.Node
    kind: str  # conv | gemm | matmul
    out: str  # output tensor name (its layout's elements are this root's)
    elems: np.ndarray
    weight: WeightRef
    axis: int  # output-channel axis of the weight


@dataclass
class Slice:
    """Slice a constant along `axis` with the kept-mask of tensor `tensor`'s layout."""

    ref: WeightRef
    axis: int
    tensor: str
    role: str  # "out" (root output channels), "in" (sink input), "param" (BN etc.)


@dataclass
class Sink:
    node: gs.Node
    kind: str  # conv | gemm | matmul
    tensor: str  # the input tensor whose channels are pruned
    weight: WeightRef
    axis: int  # input-channel axis of the weight


@dataclass
class Fixup:
    """A non-weight edit run after pruning: fn(kept count of `tensor`'s channel axis, namer)."""

    tensor: str
    fn: Callable
    # When set, fn receives the kept counts of all these tensors (a list) instead.
    tensors: list[str] | None = None


@dataclass
class Analysis:
    layouts: dict[str, Layout] = field(default_factory=dict)
    roots: list[Root] = field(default_factory=list)
    slices: list[Slice] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    fixups: list[Fixup] = field(default_factory=list)
    nonempty: list[str] = field(default_factory=list)  # tensors that must keep >= 1 channel
    parent: list[int] = field(default_factory=list)
    blocked: set[int] = field(default_factory=set)  # element ids (not roots of the union-find)
    reasons: Counter = field(default_factory=Counter)

    # -- union-find ---------------------------------------------------------------------
    def new_elems(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        before = len(self.blocked)
        self.blocked.update(layout.elems.tolist())
        if len(self.blocked) > before:
            self.reasons[reason] += 1

    def components(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def blocked_components(self, comp: np.ndarray) -> set[int]:
        return {int(comp[e]) for e in self.blocked}


class Unsupported(Exception):
    """Raised by an op rule that does not understand a node: its inputs' channels block."""


class Analyzer:
    """The state an op rule works on: shapes, the records (`a`), weight ownership."""

    def __init__(self, graph: gs.Graph, shapes: dict[str, list], opset: int):
        self.graph = graph
        # Symbolic dims (dim_param strings) are kept in raw_shapes for the reshape
        # analysis; everywhere else a dim is an int or None.
        self.raw_shapes = shapes
        self.shapes = {k: [d if isinstance(d, int) else None for d in v] for k, v in shapes.items()}
        self.opset = opset or 13
        self.a = Analysis()
        # Tensors read inside subgraphs: their channels cannot change.
        self.sub_used: set[str] = set()
        for node in graph.nodes:
            for sub in subgraphs_of(node):
                self.sub_used |= outer_names_used(sub)
        self.use_count: Counter = Counter()
        for g in iter_graphs(graph):
            for node in g.nodes:
                for t in node.inputs:
                    self.use_count[t.name] += 1
        self.out_names = {t.name for t in graph.outputs}

    # -- helpers ------------------------------------------------------------------------
    def shape(self, t: gs.Tensor) -> list | None:
        if isinstance(t, gs.Constant):
            return list(t.values.shape)
        s = self.shapes.get(t.name)
        if s is None and t.shape is not None:
            s = [d if isinstance(d, int) else None for d in t.shape]
        return s

    def weight(self, node: gs.Node, i: int) -> WeightRef | None:
        """A constant input used only by this node (so it may be rewritten)."""
        if i >= len(node.inputs) or not node.inputs[i].name and not isinstance(node.inputs[i], gs.Constant):
            return None
        t = node.inputs[i]
        if self.use_count[t.name] != 1 or t.name in self.sub_used or t.name in self.out_names:
            return None
        if read_constant(t) is None:
            return None
        if isinstance(t, gs.Variable) and len(t.outputs) != 1:
            return None
        return WeightRef(node, i)

    def layout(self, t: gs.Tensor) -> Layout | None:
        return self.a.layouts.get(t.name) if t.name else None

    def set_layout(self, t: gs.Tensor, layout: Layout) -> None:
        self.a.layouts[t.name] = layout

    def block_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            self.a.block(self.layout(t), reason)

    # -- driver ---------------------------------------------------------------------------
    def run(self, rules: Mapping[str, Callable[["Analyzer", gs.Node], None]]) -> Analysis:
        """Apply `rules` (op type -> rule) to every node; a node without a rule blocks
        the channels it reads."""
        for node in self.graph.nodes:
            if subgraphs_of(node):
                self.block_inputs(node, f"{node.op} (subgraph)")
                continue
            if (node.domain or "") not in ("", "ai.onnx"):
                self.block_inputs(node, f"{node.domain}.{node.op}")
                continue
            rule = rules.get(node.op)
            try:
                if rule is not None:
                    rule(self, node)
                elif any(self.layout(t) for t in node.inputs):
                    self.block_inputs(node, node.op)
            except Unsupported as e:
                self.block_inputs(node, f"{node.op}: {e}")
                for t in node.outputs:
                    self.a.layouts.pop(t.name, None)
        for t in self.graph.outputs:
            self.a.block(self.layout(t), "graph output")
        for name in self.sub_used:
            self.a.block(self.a.layouts.get(name), "read by a subgraph")
        return self.a
