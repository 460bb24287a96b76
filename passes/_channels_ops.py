"""How each op moves, couples or blocks channels: the rules of the channel analysis
(passes/_channels.py) used by pass `prune`.

- pass-through ops (activations, pooling, BN, Pad/Resize without channel change,
  Transpose, reductions over other axes) copy the layout (BN and per-channel constants
  are recorded as parameters to slice with it);
- elementwise ops between two channel tensors (residual Add/Sub/Mul, SE scaling) unite
  their elements position by position: coupled channels are removed together;
- Concat along the channel axis concatenates layouts (channels map by offset);
- depthwise and grouped Conv tie a group's output channels to its input channels (its
  weights are sliced with the input): whole groups are removed;
- Flatten/Reshape map a channel to a block of features (`np.repeat`), so a following
  Gemm/MatMul drops whole blocks of input features;
- Conv/Gemm/MatMul consuming a layout are *sinks*: their weights lose input channels.

A rule raises `Unsupported` (with the reason counted in the statistics) when it does
not understand a node; an op without a rule blocks the channels it reads.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.ir import const_value

from ._channels import Analysis, Analyzer, Fixup, Layout, Root, Sink, Slice, Unsupported, WeightRef, read_constant

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


def on_channels(rule):
    """A rule that applies only when the node's first input carries channels: called as
    rule(az, node, x, layout of x); nodes whose first input has none are left alone."""

    def apply(az: Analyzer, node: gs.Node) -> None:
        x = node.inputs[0] if node.inputs else None
        lx = az.layout(x) if x is not None else None
        if lx is not None:
            rule(az, node, x, lx)

    return apply


def new_root(az: Analyzer, node: gs.Node, kind: str, weight: WeightRef, w_axis: int, n: int,
             out_axis: int, bias: WeightRef | None = None, bias_axis: int = 0) -> None:
    y = node.outputs[0]
    elems = az.a.new_elems(n)
    az.a.roots.append(Root(node, kind, y.name, elems, weight, w_axis))
    az.set_layout(y, Layout(elems, out_axis))
    az.a.slices.append(Slice(weight, w_axis, y.name, "out"))
    if bias is not None:
        az.a.slices.append(Slice(bias, bias_axis, y.name, "out"))


def conv(az: Analyzer, node: gs.Node) -> None:
    x = node.inputs[0]
    lx = az.layout(x)
    w = az.weight(node, 1)
    group = int(node.attrs.get("group", 1))
    xs = az.shape(x)
    if lx is not None and lx.axis != 1:
        raise Unsupported("channel not on axis 1")
    has_bias = len(node.inputs) > 2 and node.inputs[2].name
    bias = az.weight(node, 2) if has_bias else None
    if w is None or (has_bias and bias is None) or xs is None or len(xs) < 3:
        raise Unsupported("non-constant or shared weights")
    wv = w.get()
    cout = wv.shape[0]
    cin = xs[1]
    if group == 1:
        if lx is not None:
            az.a.slices.append(Slice(w, 1, x.name, "in"))
            az.a.sinks.append(Sink(node, "conv", x.name, w, 1))
        new_root(az, node, "conv", w, 0, cout, 1, bias, 0)
    elif cin is not None and cin % group == 0 and cout % group == 0 and wv.shape[1] == cin // group:
        # Depthwise (a=1) and grouped convs: a group's input and output channels go
        # together, so whole groups are removed (their a inputs are one unit).
        if lx is None:
            return  # output channels tied to unprunable inputs
        a_in, b_out = cin // group, cout // group
        per_group = lx.elems.reshape(group, a_in)
        if a_in > 1:
            az.a.union(np.repeat(per_group[:, 0], a_in - 1), per_group[:, 1:].reshape(-1))
        y = node.outputs[0]
        az.set_layout(y, Layout(np.repeat(per_group[:, 0], b_out), 1))
        az.a.slices.append(Slice(w, 0, y.name, "param"))
        if bias is not None:
            az.a.slices.append(Slice(bias, 0, y.name, "param"))

        def set_group(kept: int, namer, node=node, a_in=a_in) -> None:
            node.attrs["group"] = int(kept) // a_in

        az.a.fixups.append(Fixup(x.name, set_group))
    else:
        raise Unsupported("grouped Conv")


def gemm(az: Analyzer, node: gs.Node) -> None:
    a_t = node.inputs[0]
    la = az.layout(a_t)
    if int(node.attrs.get("transA", 0)):
        raise Unsupported("transA")
    trans_b = int(node.attrs.get("transB", 0))
    w = az.weight(node, 1)
    c_ref = None
    if len(node.inputs) > 2 and node.inputs[2].name:
        c_ref = az.weight(node, 2)
        if c_ref is None:
            raise Unsupported("non-constant C")
    if w is None:
        raise Unsupported("non-constant B")
    wv = w.get()
    if wv.ndim != 2:
        raise Unsupported("B is not 2-D")
    n = wv.shape[0] if trans_b else wv.shape[1]
    if la is not None:
        if la.axis != 1:
            raise Unsupported("features not on axis 1")
        az.a.slices.append(Slice(w, 1 if trans_b else 0, a_t.name, "in"))
        az.a.sinks.append(Sink(node, "gemm", a_t.name, w, 1 if trans_b else 0))
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
    new_root(az, node, "gemm", w, 0 if trans_b else 1, n, 1, c_ref, bias_axis)


def matmul(az: Analyzer, node: gs.Node) -> None:
    a_t = node.inputs[0]
    la = az.layout(a_t)
    w = az.weight(node, 1)
    if w is None or w.get().ndim != 2 or az.layout(node.inputs[1]) is not None:
        raise Unsupported("non-constant or batched B")
    a_shape = az.shape(a_t)
    if a_shape is None:
        raise Unsupported("unknown shape")
    if la is not None:
        if la.axis != len(a_shape) - 1:
            raise Unsupported("features not on the last axis")
        az.a.slices.append(Slice(w, 0, a_t.name, "in"))
        az.a.sinks.append(Sink(node, "matmul", a_t.name, w, 0))
    n = w.get().shape[1]
    new_root(az, node, "matmul", w, 1, n, max(len(a_shape) - 1, 0))


@on_channels
def passthrough(az: Analyzer, node: gs.Node, x: gs.Tensor, lx: Layout) -> None:
    op = node.op
    used_outputs = [t for t in node.outputs[1:] if t.outputs or t.name in az.out_names]
    if used_outputs:
        raise Unsupported("extra outputs in use")
    if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
              "GlobalLpPool", "InstanceNormalization", "Resize", "Upsample") and lx.axis != 1:
        raise Unsupported("channel not on axis 1")
    if op == "BatchNormalization":
        if lx.axis != 1:
            raise Unsupported("channel not on axis 1")
        for i in range(1, 5):
            ref = az.weight(node, i)
            if ref is None:
                raise Unsupported("non-constant parameters")
            az.a.slices.append(Slice(ref, 0, x.name, "param"))
    elif op == "InstanceNormalization":
        for i in (1, 2):
            ref = az.weight(node, i)
            if ref is None:
                raise Unsupported("non-constant parameters")
            az.a.slices.append(Slice(ref, 0, x.name, "param"))
    elif op == "PRelu":
        rank = len(az.shape(x) or [])
        az.set_layout(node.outputs[0], Layout(lx.elems, lx.axis))
        ax = operand_axis(az, node.inputs[1], lx.axis, rank, "unknown constant shape")
        if ax is not None:
            slice_constant(az, node, 1, ax, node.outputs[0], len(lx.elems))
    elif op == "Clip":
        for t in node.inputs[1:]:
            if t.name and az.shape(t) not in ([], [1]):
                raise Unsupported("non-scalar bounds")
    elif op == "Pad":
        check_pad(az, node, lx, x)
    elif op in ("Resize", "Upsample"):
        check_resize(az, node, lx, x)
    az.set_layout(node.outputs[0], Layout(lx.elems, lx.axis))


def operand_axis(az: Analyzer, t: gs.Tensor, axis: int, rank: int, unknown: str) -> int | None:
    """The axis of operand `t` that meets channel `axis` of a rank-`rank` result under
    broadcasting, or None when `t` broadcasts along it (Unsupported(`unknown`) when the
    shape of `t` is unknown)."""
    s = az.shape(t)
    if s is None:
        raise Unsupported(unknown)
    ax = axis - (rank - len(s))
    return None if ax < 0 or s[ax] == 1 else ax


def slice_constant(az: Analyzer, node: gs.Node, i: int, ax: int, out: gs.Tensor, n: int) -> None:
    """Slice per-channel constant input `i` (channels on its axis `ax`) with `out`'s layout."""
    ref = az.weight(node, i)
    if ref is None or az.shape(node.inputs[i])[ax] != n:
        raise Unsupported("shared or mismatched per-channel constant")
    az.a.slices.append(Slice(ref, ax, out.name, "param"))


def check_pad(az: Analyzer, node: gs.Node, lx: Layout, x: gs.Tensor) -> None:
    rank = len(az.shape(x) or [])
    if "pads" in node.attrs:
        pads = list(node.attrs["pads"])
        axes = list(range(rank))
    else:
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None:
            raise Unsupported("non-constant pads")
        pads = list(np.asarray(pads).reshape(-1))
        axes = list(range(rank))
        if len(node.inputs) > 3 and node.inputs[3].name:
            av = const_value(node.inputs[3])
            if av is None:
                raise Unsupported("non-constant axes")
            axes = [int(a) % rank for a in np.asarray(av).reshape(-1)]
    k = len(axes)
    for j, a in enumerate(axes):
        if a == lx.axis and (pads[j] != 0 or pads[j + k] != 0):
            raise Unsupported("pads the channel axis")


def check_resize(az: Analyzer, node: gs.Node, lx: Layout, x: gs.Tensor) -> None:
    if node.op == "Upsample" and "scales" in node.attrs:
        scales = list(node.attrs["scales"])
        if scales[lx.axis] != 1:
            raise Unsupported("scales the channel axis")
        return
    scale_idx = 2 if node.op == "Resize" and az.opset >= 11 else 1
    sizes_idx = 3
    if len(node.inputs) > sizes_idx and node.inputs[sizes_idx].name:
        raise Unsupported("explicit sizes")
    if len(node.inputs) > scale_idx and node.inputs[scale_idx].name:
        sv = const_value(node.inputs[scale_idx])
        if sv is None or np.asarray(sv).reshape(-1)[lx.axis] != 1:
            raise Unsupported("scales the channel axis")
    if "axes" in node.attrs:
        raise Unsupported("axes attribute")


def elementwise(az: Analyzer, node: gs.Node) -> None:
    ins = [t for t in node.inputs if t.name or isinstance(t, gs.Constant)]
    layouts = [(t, az.layout(t)) for t in ins if az.layout(t) is not None]
    if not layouts:
        return
    out_shape = az.shape(node.outputs[0])
    if out_shape is None:
        raise Unsupported("unknown output shape")
    rank = len(out_shape)
    aligned = set()
    for t, lt in layouts:
        s = az.shape(t)
        if s is None:
            raise Unsupported("unknown input shape")
        aligned.add(lt.axis + rank - len(s))
    if len(aligned) != 1:
        raise Unsupported("operands disagree on the channel axis")
    axis = aligned.pop()
    first = layouts[0][1]
    n = len(first.elems)
    for t, lt in layouts[1:]:
        if len(lt.elems) != n:
            raise Unsupported("operands disagree on channel count")
    y = node.outputs[0]
    for t in ins:
        if az.layout(t) is not None:
            continue
        ax = operand_axis(az, t, axis, rank, "unknown operand shape")
        if ax is None:
            continue
        if node.op == "Pow" and t is node.inputs[1]:
            raise Unsupported("per-channel exponent")
        if read_constant(t) is None:
            raise Unsupported("operand without channel mapping")
        slice_constant(az, node, node.inputs.index(t), ax, y, n)
    for t, lt in layouts[1:]:
        az.a.union(first.elems, lt.elems)
    az.set_layout(y, Layout(first.elems, axis))


def concat(az: Analyzer, node: gs.Node) -> None:
    ins = list(node.inputs)
    layouts = [az.layout(t) for t in ins]
    if not any(layouts):
        return
    out_shape = az.shape(node.outputs[0])
    if out_shape is None:
        raise Unsupported("unknown output shape")
    rank = len(out_shape)
    axis = int(node.attrs.get("axis", 0)) % rank
    ch_axes = {lt.axis for lt in layouts if lt is not None}
    if len(ch_axes) != 1:
        raise Unsupported("inputs disagree on the channel axis")
    ch = ch_axes.pop()
    if axis == ch:
        parts = []
        for t, lt in zip(ins, layouts):
            if lt is not None:
                parts.append(lt.elems)
                continue
            s = az.shape(t)
            if s is None or s[ch] is None:
                raise Unsupported("unknown input shape")
            fresh = Layout(az.a.new_elems(s[ch]), ch)
            az.a.block(fresh, "Concat with a fixed input")
            parts.append(fresh.elems)
        az.set_layout(node.outputs[0], Layout(np.concatenate(parts), ch))
    else:
        present = [lt for lt in layouts if lt is not None]
        if len(present) != len(ins) or len({len(lt.elems) for lt in present}) != 1:
            raise Unsupported("mixed inputs on a non-channel axis")
        for lt in present[1:]:
            az.a.union(present[0].elems, lt.elems)
        az.set_layout(node.outputs[0], Layout(present[0].elems, ch))


def reshape_like(az: Analyzer, node: gs.Node, x: gs.Tensor, lx: Layout, fix_shape: bool) -> None:
    ins, outs = az.raw_shapes.get(x.name), az.raw_shapes.get(node.outputs[0].name)
    if ins is None or outs is None or any(d is None for d in ins) or any(d is None for d in outs):
        raise Unsupported("dynamic shape")
    a, c = lx.axis, len(lx.elems)
    if not all(isinstance(d, int) for d in ins[a + 1:]):
        raise Unsupported("dynamic shape")
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
        raise Unsupported("reshape mixes the channel axis")
    b, rep = found
    y = node.outputs[0]
    az.set_layout(y, Layout(np.repeat(lx.elems, rep), b))
    if fix_shape:
        sv = const_value(node.inputs[1])
        if sv is None:
            raise Unsupported("non-constant shape")
        sv = np.asarray(sv).reshape(-1).copy()
        if sv[b] == 0 and not (b == a and rep == 1):
            raise Unsupported("shape copies a dimension")
        if sv[b] > 0:
            shape_holder = node

            def fix(kept: int, namer, node=shape_holder, b=b, sv=sv) -> None:
                new = sv.copy()
                new[b] = kept
                node.inputs[1] = gs.Constant(namer(node.inputs[1].name or "shape"), new.astype(np.int64))

            az.a.fixups.append(Fixup(y.name, fix))


@on_channels
def split(az: Analyzer, node: gs.Node, x: gs.Tensor, lx: Layout) -> None:
    xs = az.shape(x)
    if xs is None:
        raise Unsupported("unknown shape")
    axis = int(node.attrs.get("axis", 0)) % len(xs)
    outs = list(node.outputs)
    if axis != lx.axis:
        for y in outs:
            az.set_layout(y, Layout(lx.elems, lx.axis))
        return
    sizes = [(az.shape(y) or [None] * len(xs))[axis] for y in outs]
    if any(sz is None for sz in sizes) or sum(sizes) != len(lx.elems):
        raise Unsupported("unknown split sizes")
    start = 0
    for y, sz in zip(outs, sizes):
        az.set_layout(y, Layout(lx.elems[start:start + sz], lx.axis))
        az.a.nonempty.append(y.name)
        start += sz
    has_input = len(node.inputs) > 1 and node.inputs[1].name
    if has_input and read_constant(node.inputs[1]) is None:
        raise Unsupported("non-constant split sizes")
    opset = az.opset

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

    az.a.fixups.append(Fixup(outs[0].name, fix, [y.name for y in outs]))


@on_channels
def transpose(az: Analyzer, node: gs.Node, x: gs.Tensor, lx: Layout) -> None:
    perm = node.attrs.get("perm")
    if perm is None:
        rank = len(az.shape(x) or [])
        perm = list(reversed(range(rank)))
    az.set_layout(node.outputs[0], Layout(lx.elems, list(perm).index(lx.axis)))


@on_channels
def reduce(az: Analyzer, node: gs.Node, x: gs.Tensor, lx: Layout) -> None:
    rank = len(az.shape(x) or [])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        av = const_value(node.inputs[1])
        if av is None:
            raise Unsupported("non-constant axes")
        axes = list(np.asarray(av).reshape(-1))
    if not axes:
        raise Unsupported("reduces every axis")
    axes = sorted(int(a) % rank for a in axes)
    if lx.axis in axes:
        raise Unsupported("reduces the channel axis")
    keep = int(node.attrs.get("keepdims", 1))
    axis = lx.axis if keep else lx.axis - sum(1 for a in axes if a < lx.axis)
    az.set_layout(node.outputs[0], Layout(lx.elems, axis))


@on_channels
def softmax(az: Analyzer, node: gs.Node, x: gs.Tensor, lx: Layout) -> None:
    rank = len(az.shape(x) or [])
    default = -1 if az.opset >= 13 else 1
    axis = int(node.attrs.get("axis", default)) % max(rank, 1)
    if (az.opset < 13 and axis <= lx.axis) or (az.opset >= 13 and axis == lx.axis):
        raise Unsupported("normalizes across channels")
    az.set_layout(node.outputs[0], Layout(lx.elems, lx.axis))


def _sym_prod(dims) -> tuple[int, tuple[str, ...]]:
    """Product of dims where some are symbols: (product of the ints, sorted symbols)."""
    ints = [d for d in dims if isinstance(d, int)]
    syms = tuple(sorted(str(d) for d in dims if not isinstance(d, int)))
    return int(np.prod(ints)) if ints else 1, syms


RULES = {
    **dict.fromkeys(UNARY_PASSTHROUGH, passthrough),
    **dict.fromkeys(ELEMENTWISE, elementwise),
    **dict.fromkeys(REDUCE, reduce),
    "Conv": conv, "Gemm": gemm, "MatMul": matmul, "Concat": concat,
    "Reshape": on_channels(partial(reshape_like, fix_shape=True)),
    **dict.fromkeys(("Flatten", "Squeeze", "Unsqueeze"), on_channels(partial(reshape_like, fix_shape=False))),
    "Split": split, "Transpose": transpose, "Softmax": softmax, "LogSoftmax": softmax,
}


def analyze(graph: gs.Graph, shapes: dict[str, list], opset: int) -> Analysis:
    """The channel analysis of `graph` (`shapes`: analysis.shapes.static_shapes)."""
    return Analyzer(graph, shapes, opset).run(RULES)
