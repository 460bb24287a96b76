"""Channel dependency analysis for structured pruning (used by pass `prune`).

Every prunable producer (a *root*: Conv with group=1, Gemm, MatMul with a constant
weight) creates one *element* per output channel. Each tensor derived from roots gets a
*layout*: the element of every position along its channel axis. Ops are interpreted
channel-wise:

- pass-through ops (activations, pooling, BN, Pad/Resize without channel change,
  Transpose, reductions over other axes) copy the layout (BN and per-channel constants
  are recorded as parameters to slice with it);
- elementwise ops between two channel tensors (residual Add/Sub/Mul, SE scaling) unite
  their elements position by position: coupled channels are removed together;
- Concat along the channel axis concatenates layouts (channels map by offset);
- depthwise Conv ties output channels to input channels (its weights are sliced with
  the input); grouped Conv is not understood and blocks;
- Flatten/Reshape map a channel to a block of features (`np.repeat`), so a following
  Gemm/MatMul drops whole blocks of input features;
- Conv/Gemm/MatMul consuming a layout are *sinks*: their weights lose input channels.

A union-find over elements yields the removable *units* (sets of coupled channels).
A unit is *blocked* when any of its elements reaches a graph output, a subgraph or an
op this analysis does not understand; blocked units are never removed and the reasons
are counted for the pass statistics.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.analysis.shapes import skeleton
from graphopt.ir import const_value, iter_graphs, outer_names_used, subgraphs_of

log = logging.getLogger(__name__)

UNARY_PASSTHROUGH = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu",
    "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Identity", "Dropout", "Cast", "Mish",
    "ThresholdedRelu", "Sign", "Sin", "Cos", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization",
    "Pad", "Resize", "Upsample",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
          "ReduceProd", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


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


# ------------------------------------------------------------------------------ analysis


def infer_shapes(model_proto: onnx.ModelProto, input_shapes: dict | None = None) -> dict[str, list]:
    """Static shapes (None for unknown dims) of every tensor onnx shape inference knows;
    `input_shapes` (name -> dims) pins symbolic input dims first."""
    sk = skeleton(model_proto)
    for vi in sk.graph.input:
        dims = (input_shapes or {}).get(vi.name)
        if dims is not None and len(dims) == len(vi.type.tensor_type.shape.dim):
            for d, v in zip(vi.type.tensor_type.shape.dim, dims):
                if isinstance(v, int) and v > 0:
                    d.dim_value = v
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
    except Exception as e:  # inference is best-effort: missing shapes just block pruning
        log.info("shape inference failed (%s); pruning only where shapes are known", e)
        inferred = model_proto
    shapes: dict[str, list] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in tt.shape.dim]
    for init in model_proto.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


class Analyzer:
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
    def run(self) -> Analysis:
        for node in self.graph.nodes:
            if subgraphs_of(node):
                self.block_inputs(node, f"{node.op} (subgraph)")
                continue
            if (node.domain or "") not in ("", "ai.onnx"):
                self.block_inputs(node, f"{node.domain}.{node.op}")
                continue
            handler = getattr(self, "op_" + node.op, None)
            try:
                if handler is not None:
                    handler(node)
                elif node.op in UNARY_PASSTHROUGH:
                    self.passthrough(node)
                elif node.op in ELEMENTWISE:
                    self.elementwise(node)
                elif node.op in REDUCE:
                    self.reduce(node)
                elif any(self.layout(t) for t in node.inputs):
                    self.block_inputs(node, node.op)
            except _Unsupported as e:
                self.block_inputs(node, f"{node.op}: {e}")
                for t in node.outputs:
                    self.a.layouts.pop(t.name, None)
        for t in self.graph.outputs:
            self.a.block(self.layout(t), "graph output")
        for name in self.sub_used:
            self.a.block(self.a.layouts.get(name), "read by a subgraph")
        return self.a

    # -- producers / consumers ------------------------------------------------------------
    def new_root(self, node: gs.Node, kind: str, weight: WeightRef, w_axis: int, n: int,
                 out_axis: int, bias: WeightRef | None = None, bias_axis: int = 0) -> None:
        y = node.outputs[0]
        elems = self.a.new_elems(n)
        self.a.roots.append(Root(node, kind, y.name, elems, weight, w_axis))
        self.set_layout(y, Layout(elems, out_axis))
        self.a.slices.append(Slice(weight, w_axis, y.name, "out"))
        if bias is not None:
            self.a.slices.append(Slice(bias, bias_axis, y.name, "out"))

    def op_Conv(self, node: gs.Node) -> None:
        x = node.inputs[0]
        lx = self.layout(x)
        w = self.weight(node, 1)
        group = int(node.attrs.get("group", 1))
        xs = self.shape(x)
        if lx is not None and lx.axis != 1:
            raise _Unsupported("channel not on axis 1")
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        bias = self.weight(node, 2) if has_bias else None
        if w is None or (has_bias and bias is None) or xs is None or len(xs) < 3:
            raise _Unsupported("non-constant or shared weights")
        wv = w.get()
        cout = wv.shape[0]
        cin = xs[1]
        if group == 1:
            if lx is not None:
                self.a.slices.append(Slice(w, 1, x.name, "in"))
                self.a.sinks.append(Sink(node, "conv", x.name, w, 1))
            self.new_root(node, "conv", w, 0, cout, 1, bias, 0)
        elif cin is not None and cin % group == 0 and cout % group == 0 and wv.shape[1] == cin // group:
            # Depthwise (a=1) and grouped convs: a group's input and output channels go
            # together, so whole groups are removed (their a inputs are one unit).
            if lx is None:
                return  # output channels tied to unprunable inputs
            a_in, b_out = cin // group, cout // group
            per_group = lx.elems.reshape(group, a_in)
            if a_in > 1:
                self.a.union(np.repeat(per_group[:, 0], a_in - 1), per_group[:, 1:].reshape(-1))
            y = node.outputs[0]
            self.set_layout(y, Layout(np.repeat(per_group[:, 0], b_out), 1))
            self.a.slices.append(Slice(w, 0, y.name, "param"))
            if bias is not None:
                self.a.slices.append(Slice(bias, 0, y.name, "param"))

            def set_group(kept: int, namer, node=node, a_in=a_in) -> None:
                node.attrs["group"] = int(kept) // a_in

            self.a.fixups.append(Fixup(x.name, set_group))
        else:
            raise _Unsupported("grouped Conv")

    def op_Gemm(self, node: gs.Node) -> None:
        a_t = node.inputs[0]
        la = self.layout(a_t)
        if int(node.attrs.get("transA", 0)):
            raise _Unsupported("transA")
        trans_b = int(node.attrs.get("transB", 0))
        w = self.weight(node, 1)
        c_ref = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            c_ref = self.weight(node, 2)
            if c_ref is None:
                raise _Unsupported("non-constant C")
        if w is None:
            raise _Unsupported("non-constant B")
        wv = w.get()
        if wv.ndim != 2:
            raise _Unsupported("B is not 2-D")
        n = wv.shape[0] if trans_b else wv.shape[1]
        if la is not None:
            if la.axis != 1:
                raise _Unsupported("features not on axis 1")
            self.a.slices.append(Slice(w, 1 if trans_b else 0, a_t.name, "in"))
            self.a.sinks.append(Sink(node, "gemm", a_t.name, w, 1 if trans_b else 0))
        bias_axis = 0
        if c_ref is not None:
            cv = c_ref.get()
            if cv.ndim == 0 or cv.shape[-1] == 1:
                c_ref = None  # broadcast scalar/column: nothing to slice
            elif cv.ndim == 2 and cv.shape[0] != 1:
                c_ref, n = None, None  # a full [M, N] C: leave this Gemm's outputs alone
            else:
                bias_axis = cv.ndim - 1
        if n is None:
            return
        self.new_root(node, "gemm", w, 0 if trans_b else 1, n, 1, c_ref, bias_axis)

    def op_MatMul(self, node: gs.Node) -> None:
        a_t = node.inputs[0]
        la = self.layout(a_t)
        w = self.weight(node, 1)
        if w is None or w.get().ndim != 2 or self.layout(node.inputs[1]) is not None:
            raise _Unsupported("non-constant or batched B")
        a_shape = self.shape(a_t)
        if a_shape is None:
            raise _Unsupported("unknown shape")
        if la is not None:
            if la.axis != len(a_shape) - 1:
                raise _Unsupported("features not on the last axis")
            self.a.slices.append(Slice(w, 0, a_t.name, "in"))
            self.a.sinks.append(Sink(node, "matmul", a_t.name, w, 0))
        n = w.get().shape[1]
        self.new_root(node, "matmul", w, 1, n, max(len(a_shape) - 1, 0))

    # -- channel-wise ops --------------------------------------------------------------------
    def passthrough(self, node: gs.Node) -> None:
        x = node.inputs[0] if node.inputs else None
        lx = self.layout(x) if x is not None else None
        if lx is None:
            return
        op = node.op
        used_outputs = [t for t in node.outputs[1:] if t.outputs or t.name in self.out_names]
        if used_outputs:
            raise _Unsupported("extra outputs in use")
        if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                  "GlobalLpPool", "InstanceNormalization", "Resize", "Upsample") and lx.axis != 1:
            raise _Unsupported("channel not on axis 1")
        if op == "BatchNormalization":
            if lx.axis != 1:
                raise _Unsupported("channel not on axis 1")
            for i in range(1, 5):
                ref = self.weight(node, i)
                if ref is None:
                    raise _Unsupported("non-constant parameters")
                self.a.slices.append(Slice(ref, 0, x.name, "param"))
        elif op == "InstanceNormalization":
            for i in (1, 2):
                ref = self.weight(node, i)
                if ref is None:
                    raise _Unsupported("non-constant parameters")
                self.a.slices.append(Slice(ref, 0, x.name, "param"))
        elif op == "PRelu":
            rank = len(self.shape(x) or [])
            self.set_layout(node.outputs[0], Layout(lx.elems, lx.axis))
            self.channel_constant(node, 1, node.outputs[0], lx.axis, rank, len(lx.elems))
        elif op == "Clip":
            for t in node.inputs[1:]:
                if t.name and self.shape(t) not in ([], [1]):
                    raise _Unsupported("non-scalar bounds")
        elif op == "Pad":
            self.check_pad(node, lx, x)
        elif op in ("Resize", "Upsample"):
            self.check_resize(node, lx, x)
        self.set_layout(node.outputs[0], Layout(lx.elems, lx.axis))

    def channel_constant(self, node: gs.Node, i: int, out: gs.Tensor, axis: int, rank: int, n: int) -> None:
        """A constant operand broadcast against a channel tensor (output `out`, channel
        `axis` of `rank`): slice it with `out`'s layout if it is per-channel."""
        t = node.inputs[i]
        cs = self.shape(t)
        if cs is None:
            raise _Unsupported("unknown constant shape")
        ax = axis - (rank - len(cs))
        if ax < 0 or cs[ax] == 1:
            return
        ref = self.weight(node, i)
        if ref is None or cs[ax] != n:
            raise _Unsupported("shared or mismatched per-channel constant")
        self.a.slices.append(Slice(ref, ax, out.name, "param"))

    def check_pad(self, node: gs.Node, lx: Layout, x: gs.Tensor) -> None:
        rank = len(self.shape(x) or [])
        if "pads" in node.attrs:
            pads = list(node.attrs["pads"])
            axes = list(range(rank))
        else:
            pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if pads is None:
                raise _Unsupported("non-constant pads")
            pads = list(np.asarray(pads).reshape(-1))
            axes = list(range(rank))
            if len(node.inputs) > 3 and node.inputs[3].name:
                av = const_value(node.inputs[3])
                if av is None:
                    raise _Unsupported("non-constant axes")
                axes = [int(a) % rank for a in np.asarray(av).reshape(-1)]
        k = len(axes)
        for j, a in enumerate(axes):
            if a == lx.axis and (pads[j] != 0 or pads[j + k] != 0):
                raise _Unsupported("pads the channel axis")

    def check_resize(self, node: gs.Node, lx: Layout, x: gs.Tensor) -> None:
        if node.op == "Upsample" and "scales" in node.attrs:
            scales = list(node.attrs["scales"])
            if scales[lx.axis] != 1:
                raise _Unsupported("scales the channel axis")
            return
        scale_idx = 2 if node.op == "Resize" and self.opset >= 11 else 1
        sizes_idx = 3
        if len(node.inputs) > sizes_idx and node.inputs[sizes_idx].name:
            raise _Unsupported("explicit sizes")
        if len(node.inputs) > scale_idx and node.inputs[scale_idx].name:
            sv = const_value(node.inputs[scale_idx])
            if sv is None or np.asarray(sv).reshape(-1)[lx.axis] != 1:
                raise _Unsupported("scales the channel axis")
        if "axes" in node.attrs:
            raise _Unsupported("axes attribute")

    def elementwise(self, node: gs.Node) -> None:
        ins = [t for t in node.inputs if t.name or isinstance(t, gs.Constant)]
        layouts = [(t, self.layout(t)) for t in ins if self.layout(t) is not None]
        if not layouts:
            return
        out_shape = self.shape(node.outputs[0])
        if out_shape is None:
            raise _Unsupported("unknown output shape")
        rank = len(out_shape)
        aligned = set()
        for t, lt in layouts:
            s = self.shape(t)
            if s is None:
                raise _Unsupported("unknown input shape")
            aligned.add(lt.axis + rank - len(s))
        if len(aligned) != 1:
            raise _Unsupported("operands disagree on the channel axis")
        axis = aligned.pop()
        first = layouts[0][1]
        n = len(first.elems)
        for t, lt in layouts[1:]:
            if len(lt.elems) != n:
                raise _Unsupported("operands disagree on channel count")
        y = node.outputs[0]
        for t in ins:
            if self.layout(t) is not None:
                continue
            s = self.shape(t)
            if s is None:
                raise _Unsupported("unknown operand shape")
            ax = axis - (rank - len(s))
            if ax < 0 or s[ax] == 1:
                continue
            if node.op == "Pow" and t is node.inputs[1]:
                raise _Unsupported("per-channel exponent")
            if read_constant(t) is None:
                raise _Unsupported("operand without channel mapping")
            self.channel_constant(node, node.inputs.index(t), y, axis, rank, n)
        for t, lt in layouts[1:]:
            self.a.union(first.elems, lt.elems)
        self.set_layout(y, Layout(first.elems, axis))

    def op_Concat(self, node: gs.Node) -> None:
        ins = list(node.inputs)
        layouts = [self.layout(t) for t in ins]
        if not any(layouts):
            return
        out_shape = self.shape(node.outputs[0])
        if out_shape is None:
            raise _Unsupported("unknown output shape")
        rank = len(out_shape)
        axis = int(node.attrs.get("axis", 0)) % rank
        ch_axes = {lt.axis for lt in layouts if lt is not None}
        if len(ch_axes) != 1:
            raise _Unsupported("inputs disagree on the channel axis")
        ch = ch_axes.pop()
        if axis == ch:
            parts = []
            for t, lt in zip(ins, layouts):
                if lt is not None:
                    parts.append(lt.elems)
                    continue
                s = self.shape(t)
                if s is None or s[ch] is None:
                    raise _Unsupported("unknown input shape")
                fresh = Layout(self.a.new_elems(s[ch]), ch)
                self.a.block(fresh, "Concat with a fixed input")
                parts.append(fresh.elems)
            self.set_layout(node.outputs[0], Layout(np.concatenate(parts), ch))
        else:
            present = [lt for lt in layouts if lt is not None]
            if len(present) != len(ins) or len({len(lt.elems) for lt in present}) != 1:
                raise _Unsupported("mixed inputs on a non-channel axis")
            for lt in present[1:]:
                self.a.union(present[0].elems, lt.elems)
            self.set_layout(node.outputs[0], Layout(present[0].elems, ch))

    def reshape_like(self, node: gs.Node, fix_shape: bool) -> None:
        x = node.inputs[0]
        lx = self.layout(x)
        if lx is None:
            return
        ins, outs = self.raw_shapes.get(x.name), self.raw_shapes.get(node.outputs[0].name)
        if ins is None or outs is None or any(d is None for d in ins) or any(d is None for d in outs):
            raise _Unsupported("dynamic shape")
        a, c = lx.axis, len(lx.elems)
        if not all(isinstance(d, int) for d in ins[a + 1:]):
            raise _Unsupported("dynamic shape")
        lead = _sym_prod(ins[:a])  # leading dims may be symbolic (batch), matched by name
        rest = int(np.prod(ins[a + 1:]))
        found = None
        for b in range(len(outs)):
            if _sym_prod(outs[:b]) != lead or not all(isinstance(d, int) for d in outs[b:]):
                continue
            if outs[b] == c * rest and int(np.prod(outs[b + 1:])) == 1:
                found = (b, rest)
                break
            if outs[b] == c and int(np.prod(outs[b + 1:])) == rest:
                found = (b, 1)
                break
        if found is None:
            raise _Unsupported("reshape mixes the channel axis")
        b, rep = found
        y = node.outputs[0]
        self.set_layout(y, Layout(np.repeat(lx.elems, rep), b))
        if fix_shape:
            sv = const_value(node.inputs[1])
            if sv is None:
                raise _Unsupported("non-constant shape")
            sv = np.asarray(sv).reshape(-1).copy()
            if sv[b] == 0 and not (b == a and rep == 1):
                raise _Unsupported("shape copies a dimension")
            if sv[b] > 0:
                shape_holder = node

                def fix(kept: int, namer, node=shape_holder, b=b, sv=sv) -> None:
                    new = sv.copy()
                    new[b] = kept
                    node.inputs[1] = gs.Constant(namer(node.inputs[1].name or "shape"), new.astype(np.int64))

                self.a.fixups.append(Fixup(y.name, fix))

    def op_Reshape(self, node: gs.Node) -> None:
        self.reshape_like(node, True)

    def op_Flatten(self, node: gs.Node) -> None:
        self.reshape_like(node, False)

    def op_Squeeze(self, node: gs.Node) -> None:
        self.reshape_like(node, False)

    def op_Unsqueeze(self, node: gs.Node) -> None:
        self.reshape_like(node, False)

    def op_Split(self, node: gs.Node) -> None:
        x = node.inputs[0]
        lx = self.layout(x)
        if lx is None:
            return
        xs = self.shape(x)
        if xs is None:
            raise _Unsupported("unknown shape")
        axis = int(node.attrs.get("axis", 0)) % len(xs)
        outs = list(node.outputs)
        if axis != lx.axis:
            for y in outs:
                self.set_layout(y, Layout(lx.elems, lx.axis))
            return
        sizes = [(self.shape(y) or [None] * len(xs))[axis] for y in outs]
        if any(sz is None for sz in sizes) or sum(sizes) != len(lx.elems):
            raise _Unsupported("unknown split sizes")
        start = 0
        for y, sz in zip(outs, sizes):
            self.set_layout(y, Layout(lx.elems[start:start + sz], lx.axis))
            self.a.nonempty.append(y.name)
            start += sz
        has_input = len(node.inputs) > 1 and node.inputs[1].name
        if has_input and read_constant(node.inputs[1]) is None:
            raise _Unsupported("non-constant split sizes")
        opset = self.opset

        def fix(counts, namer, node=node) -> None:
            split = np.array(counts, dtype=np.int64)
            if opset >= 13:
                node.attrs.pop("num_outputs", None)
                node.attrs.pop("split", None)
                const = gs.Constant(namer("split"), split)
                if len(node.inputs) > 1:
                    node.inputs[1] = const
                else:
                    node.inputs.append(const)
            else:
                node.attrs["split"] = [int(c) for c in counts]

        self.a.fixups.append(Fixup(outs[0].name, fix, [y.name for y in outs]))

    def op_Transpose(self, node: gs.Node) -> None:
        lx = self.layout(node.inputs[0])
        if lx is None:
            return
        perm = node.attrs.get("perm")
        if perm is None:
            rank = len(self.shape(node.inputs[0]) or [])
            perm = list(reversed(range(rank)))
        self.set_layout(node.outputs[0], Layout(lx.elems, list(perm).index(lx.axis)))

    def reduce(self, node: gs.Node) -> None:
        x = node.inputs[0]
        lx = self.layout(x)
        if lx is None:
            return
        rank = len(self.shape(x) or [])
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            av = const_value(node.inputs[1])
            if av is None:
                raise _Unsupported("non-constant axes")
            axes = list(np.asarray(av).reshape(-1))
        if not axes:
            raise _Unsupported("reduces every axis")
        axes = sorted(int(a) % rank for a in axes)
        if lx.axis in axes:
            raise _Unsupported("reduces the channel axis")
        keep = int(node.attrs.get("keepdims", 1))
        axis = lx.axis if keep else lx.axis - sum(1 for a in axes if a < lx.axis)
        self.set_layout(node.outputs[0], Layout(lx.elems, axis))

    def op_Softmax(self, node: gs.Node) -> None:
        self._softmax(node)

    def op_LogSoftmax(self, node: gs.Node) -> None:
        self._softmax(node)

    def _softmax(self, node: gs.Node) -> None:
        x = node.inputs[0]
        lx = self.layout(x)
        if lx is None:
            return
        rank = len(self.shape(x) or [])
        default = -1 if self.opset >= 13 else 1
        axis = int(node.attrs.get("axis", default)) % max(rank, 1)
        if (self.opset < 13 and axis <= lx.axis) or (self.opset >= 13 and axis == lx.axis):
            raise _Unsupported("normalizes across channels")
        self.set_layout(node.outputs[0], Layout(lx.elems, lx.axis))


def _sym_prod(dims) -> tuple[int, tuple[str, ...]]:
    """Product of dims where some are symbols: (product of the ints, sorted symbols)."""
    ints = [d for d in dims if isinstance(d, int)]
    syms = tuple(sorted(str(d) for d in dims if not isinstance(d, int)))
    return int(np.prod(ints)) if ints else 1, syms


class _Unsupported(Exception):
    pass


def analyze(graph: gs.Graph, shapes: dict[str, list], opset: int) -> Analysis:
    return Analyzer(graph, shapes, opset).run()
