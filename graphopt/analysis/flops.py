"""MACs and FLOPs of a model, computed analytically from its tensor shapes.

    counts = count_macs(model, {"input": (1, 3, 224, 224)})
    counts.total            # multiply-accumulates of the whole model
    counts.flops            # floating-point operations (see below)
    counts.per_node         # node name -> MACs
    counts.per_op_type      # op type -> MACs

What is counted
---------------
MACs (multiply-accumulates) are counted for the ops that contract: Conv, ConvTranspose,
Gemm, MatMul (batch dims broadcast), Einsum, LSTM/GRU/RNN and their quantized forms
(ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul, com.microsoft FusedMatMul,
FusedConv). For these FLOPs = 2 x MACs (the bias add is taken as the first accumulation).

Other ops have no MACs and count FLOPs per element:
  * elementwise unary/binary ops (Add, Mul, Relu, Sigmoid, Erf, Where, ...): 1 per output
    element (a variadic Sum/Max/Min/Mean of n inputs: n-1);
  * BatchNormalization (inference: scale and shift): 2 per element; LayerNormalization,
    InstanceNormalization, GroupNormalization: 7 per element (mean, subtract, square,
    sum, scale by 1/std, gamma, beta); Softmax/LogSoftmax: 5 per element (max, subtract,
    exp, sum, divide); QuantizeLinear/DequantizeLinear: 2 per element;
  * pooling: MaxPool/AveragePool/LpPool: output elements x kernel size; global pooling
    and Reduce*: input elements;
  * Resize/Upsample: 0 for nearest, 4 per output element for linear, 16 for cubic;
  * data movement (Reshape, Transpose, Concat, Slice, Gather, Pad, Cast, ...): 0.
Ops with no cost model (custom domains, calls of model-local functions, unusual ops)
count 0 and are listed in `MacCount.uncounted`. Nodes inside If/Loop/Scan bodies are counted once (a Loop body per
iteration, both If branches) and attributed to the control-flow node.

Shapes come from onnx shape inference (`graphopt.analysis.shapes`). A needed dim that is
unknown is an error naming the node, unless ``strict=False`` (then the node counts 0 and
is listed in `MacCount.unresolved`). Unbound symbolic input dims are always an error.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import onnx

from ..errors import GraphoptError
from .shapes import ShapeInfo, infer_shapes

log = logging.getLogger(__name__)


@dataclass
class NodeCost:
    """The cost of one node."""

    name: str
    op_type: str
    domain: str
    macs: int
    flops: int
    output_shape: tuple | None = None
    note: str = ""


@dataclass
class MacCount:
    """MACs and FLOPs of a model: total, per node and per op type."""

    total: int  # MACs
    flops: int
    nodes: list[NodeCost]
    input_shapes: dict[str, tuple]
    per_node: dict[str, int] = field(default_factory=dict)
    per_op_type: dict[str, int] = field(default_factory=dict)
    flops_per_node: dict[str, int] = field(default_factory=dict)
    flops_per_op_type: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)  # op type -> nodes without a cost model
    unresolved: list[str] = field(default_factory=list)  # nodes whose shapes were unknown

    @property
    def macs(self) -> int:
        return self.total

    def as_dict(self) -> dict:
        return {
            "macs": self.total,
            "flops": self.flops,
            "input_shapes": {k: list(v) if v is not None else None for k, v in self.input_shapes.items()},
            "per_op_type": {
                op: {"macs": self.per_op_type.get(op, 0), "flops": self.flops_per_op_type.get(op, 0)}
                for op in self.flops_per_op_type
            },
            "nodes": [
                {"name": n.name, "op_type": n.op_type, "macs": n.macs, "flops": n.flops,
                 "output_shape": list(n.output_shape) if n.output_shape is not None else None,
                 **({"note": n.note} if n.note else {})}
                for n in self.nodes
            ],
            "uncounted": dict(self.uncounted),
            "unresolved": list(self.unresolved),
        }


class _Unknown(Exception):
    def __init__(self, tensor: str, shape: tuple | None):
        self.tensor, self.shape = tensor, shape


# ------------------------------------------------------------------------ op tables

_UNARY = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg",
    "Abs", "Erf", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
    "Atanh", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu",
    "Mish", "Gelu", "BitwiseNot", "Shrink", "FastGelu", "QuickGelu", "BiasGelu",
}
_BINARY = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    "Where",
}
_VARIADIC = {"Sum", "Max", "Min", "Mean"}
_PER_ELEMENT = {  # op -> FLOPs per output element
    "BatchNormalization": 2, "LayerNormalization": 7, "InstanceNormalization": 7,
    "GroupNormalization": 7, "SimplifiedLayerNormalization": 5, "SkipLayerNormalization": 8,
    "Softmax": 5, "LogSoftmax": 6, "LpNormalization": 3, "MeanVarianceNormalization": 6,
    "QuantizeLinear": 2, "DequantizeLinear": 2, "DynamicQuantizeLinear": 4,
    "CumSum": 1, "Hardmax": 2, "LRN": 4,
}
_PER_INPUT_ELEMENT = {
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceSum", "ReduceMean",
    "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
}
_FREE = {
    "Reshape", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
    "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
    "ConstantOfShape", "Expand", "Tile", "Pad", "Cast", "CastLike", "DepthToSpace",
    "SpaceToDepth", "Range", "NonZero", "ScatterND", "ScatterElements", "Scatter", "Dropout",
    "TopK", "OneHot", "EyeLike", "Trilu", "ReverseSequence", "SplitToSequence",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceLength",
    "ConcatFromSequence", "Compress", "Unique", "NonMaxSuppression", "RandomNormal",
    "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Optional",
    "OptionalGetElement", "OptionalHasElement", "Col2Im", "GridSample", "RoiAlign",
    "MaxRoiPool", "MaxUnpool", "Det", "CenterCropPad",
}
_CONTROL_FLOW = {"If", "Loop", "Scan"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


# ------------------------------------------------------------------------ per-op costs


class _Ctx:
    def __init__(self, info: ShapeInfo):
        self.info = info

    def shape(self, name: str) -> tuple:
        """The fully known shape of a tensor, or raise _Unknown."""
        s = self.info.shapes.get(name) if name else None
        if s is None or any(not isinstance(d, int) for d in s):
            raise _Unknown(name, s)
        return s

    def numel(self, name: str) -> int:
        return _prod(self.shape(name))


def _conv(node, c: _Ctx, w_index: int = 1, y_index: int = 0) -> tuple[int, int]:
    y = c.shape(node.output[y_index])
    w = c.shape(node.input[w_index])
    # W is [Cout, Cin/groups, k...]: each output element sums Cin/groups * prod(k) products.
    macs = _prod(y) * _prod(w[1:])
    return macs, 2 * macs


def _conv_transpose(node, c: _Ctx) -> tuple[int, int]:
    x = c.shape(node.input[0])
    w = c.shape(node.input[1])
    # W is [Cin, Cout/groups, k...]: every input element is scattered into
    # Cout/groups * prod(k) outputs.
    macs = _prod(x) * _prod(w[1:])
    return macs, 2 * macs


def _gemm(node, c: _Ctx) -> tuple[int, int]:
    a = c.shape(node.input[0])
    b = c.shape(node.input[1])
    trans_a = _attr(node, "transA", 0)
    trans_b = _attr(node, "transB", 0)
    m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
    n = b[0] if trans_b else b[1]
    macs = m * n * k
    return macs, 2 * macs


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    out = []
    for x, y in zip(reversed(list(a)), reversed(list(b))):
        out.append(max(x, y) if 1 in (x, y) else x)
    longer = a if len(a) > len(b) else b
    out.extend(reversed(list(longer[: len(longer) - len(out)])))
    return tuple(reversed(out))


def _matmul_dims(a: tuple, b: tuple, trans_a: bool = False, trans_b: bool = False) -> int:
    if len(a) == 1:
        a = (1, a[0])
    if len(b) == 1:
        b = (b[0], 1)
    if trans_a:
        a = a[:-2] + (a[-1], a[-2])
    if trans_b:
        b = b[:-2] + (b[-1], b[-2])
    m, k = a[-2], a[-1]
    n = b[-1]
    batch = _prod(_broadcast(a[:-2], b[:-2]))
    return batch * m * n * k


def _matmul(node, c: _Ctx, a_index: int = 0, b_index: int = 1) -> tuple[int, int]:
    macs = _matmul_dims(c.shape(node.input[a_index]), c.shape(node.input[b_index]))
    return macs, 2 * macs


def _fused_matmul(node, c: _Ctx) -> tuple[int, int]:
    macs = _matmul_dims(c.shape(node.input[0]), c.shape(node.input[1]),
                        bool(_attr(node, "transA", 0)), bool(_attr(node, "transB", 0)))
    return macs, 2 * macs


def _einsum(node, c: _Ctx) -> tuple[int, int]:
    eq = _attr(node, "equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, name in zip(lhs, node.input):
        shape = c.shape(name)
        letters = [ch for ch in term if ch.isalpha()]
        if "..." in term:
            n_ell = len(shape) - len(letters)
            pre = term.split("...")[0]
            letters = [ch for ch in pre] + [f"_{i}" for i in range(n_ell)] + \
                      [ch for ch in term.split("...")[1]]
        for ch, d in zip(letters, shape):
            sizes[ch] = max(sizes.get(ch, 1), d)
    if len(lhs) < 2:
        n = c.numel(node.input[0])
        return 0, n
    # A contraction loops over every distinct index once per product term.
    macs = _prod(sizes.values()) * (len(lhs) - 1)
    return macs, 2 * macs


def _rnn(node, c: _Ctx) -> tuple[int, int]:
    x = c.shape(node.input[0])
    w = c.shape(node.input[1])  # [dirs, gates*H, input]
    r = c.shape(node.input[2])  # [dirs, gates*H, H]
    seq, batch = (x[1], x[0]) if _attr(node, "layout", 0) else (x[0], x[1])
    macs = seq * batch * (_prod(w) + _prod(r))
    # Gate nonlinearities and the state update: about 1 FLOP per gate element per step.
    extra = seq * batch * w[0] * w[1]
    return macs, 2 * macs + extra


def _pool(node, c: _Ctx) -> tuple[int, int]:
    y = c.shape(node.output[0])
    k = _attr(node, "kernel_shape", [])
    return 0, _prod(y) * _prod(k)


def _resize(node, c: _Ctx) -> tuple[int, int]:
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    per = {"nearest": 0, "linear": 4, "bilinear": 4, "cubic": 16}.get(mode, 4)
    if per == 0:
        return 0, 0
    return 0, c.numel(node.output[0]) * per


def _elementwise(per: int) -> Callable:
    def cost(node, c: _Ctx) -> tuple[int, int]:
        return 0, per * c.numel(node.output[0])

    return cost


def _variadic(node, c: _Ctx) -> tuple[int, int]:
    n = len([i for i in node.input if i])
    return 0, max(n - 1, 1) * c.numel(node.output[0])


def _per_input(node, c: _Ctx) -> tuple[int, int]:
    return 0, c.numel(node.input[0])


def _free(node, c: _Ctx) -> tuple[int, int]:
    return 0, 0


_COSTS: dict[tuple[str, str], Callable] = {}
for _op in _UNARY | _BINARY:
    _COSTS[("", _op)] = _elementwise(1)
for _op in _VARIADIC:
    _COSTS[("", _op)] = _variadic
for _op, _n in _PER_ELEMENT.items():
    _COSTS[("", _op)] = _elementwise(_n)
for _op in _PER_INPUT_ELEMENT:
    _COSTS[("", _op)] = _per_input
for _op in _FREE:
    _COSTS[("", _op)] = _free
_COSTS.update({
    ("", "Conv"): _conv,
    ("", "ConvInteger"): _conv,
    ("", "QLinearConv"): lambda n, c: _conv(n, c, w_index=3),
    ("", "ConvTranspose"): _conv_transpose,
    ("", "Gemm"): _gemm,
    ("", "MatMul"): _matmul,
    ("", "MatMulInteger"): _matmul,
    ("", "QLinearMatMul"): lambda n, c: _matmul(n, c, 0, 3),
    ("", "Einsum"): _einsum,
    ("", "LSTM"): _rnn,
    ("", "GRU"): _rnn,
    ("", "RNN"): _rnn,
    ("", "MaxPool"): _pool,
    ("", "AveragePool"): _pool,
    ("", "LpPool"): _pool,
    ("", "Resize"): _resize,
    ("", "Upsample"): _resize,
    ("com.microsoft", "FusedMatMul"): _fused_matmul,
    ("com.microsoft", "FusedConv"): _conv,
    ("com.microsoft", "FusedGemm"): _gemm,
    ("com.microsoft", "QLinearAdd"): _elementwise(1),
    ("com.microsoft", "QLinearMul"): _elementwise(1),
    ("com.microsoft", "Gelu"): _elementwise(1),
    ("com.microsoft", "FastGelu"): _elementwise(1),
    ("com.microsoft", "BiasGelu"): _elementwise(2),
    ("com.microsoft", "QuickGelu"): _elementwise(1),
    ("com.microsoft", "SkipLayerNormalization"): _elementwise(8),
    ("com.microsoft", "SimplifiedLayerNormalization"): _elementwise(5),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): _elementwise(6),
})


# ------------------------------------------------------------------------ counting


def _show(shape: tuple | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _cost_of(node: onnx.NodeProto, c: _Ctx, functions: dict) -> tuple[int, int, str] | None:
    """(macs, flops, note) or None when the op has no cost model."""
    key = (_domain(node), node.op_type)
    fn = _COSTS.get(key)
    if fn is not None:
        macs, flops = fn(node, c)
        return macs, flops, ""
    if node.op_type in _CONTROL_FLOW and key[0] == "":
        macs = flops = 0
        for g in _subgraphs(node):
            for sub in g.node:
                r = _cost_of(sub, c, functions)
                if r is not None:
                    macs += r[0]
                    flops += r[1]
        note = "body counted once per iteration" if node.op_type != "If" else "both branches counted"
        return macs, flops, note
    return None


def count_macs(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    batch: int | None = None,
    strict: bool = True,
    shapes: ShapeInfo | None = None,
) -> MacCount:
    """Count MACs and FLOPs of `model` with its inputs bound to concrete shapes.

    input_shapes: input name -> shape; dims: symbolic dim name -> value; batch: the
    leading dim of inputs whose leading dim is symbolic. See the module docstring for what
    counts. Raises GraphoptError when a needed dim is unknown (``strict=False``: the node
    counts 0 and is listed in `unresolved`, except for unbound input dims).
    """
    info = shapes or infer_shapes(model, input_shapes, dims=dims, batch=batch)
    unbound = {
        d: name for name, shape in info.bound.items() for d in (shape or ())
        if isinstance(d, str)
    }
    none_inputs = [name for name, shape in info.bound.items()
                   if shape is None or any(d is None for d in shape)]
    c = _Ctx(info)
    functions = {(f.domain, f.name): f for f in model.functions}
    nodes: list[NodeCost] = []
    used_names: dict[str, int] = defaultdict(int)
    uncounted: dict[str, int] = defaultdict(int)
    unresolved: list[str] = []
    for index, node in enumerate(model.graph.node):
        base = node.name or f"{node.op_type}_{index}"
        used_names[base] += 1
        name = base if used_names[base] == 1 else f"{base}#{used_names[base]}"
        op = node.op_type if not _domain(node) else f"{_domain(node)}.{node.op_type}"
        try:
            r = _cost_of(node, c, functions)
        except _Unknown as e:
            symbols = [d for d in (e.shape or ()) if isinstance(d, str) and d in unbound]
            if symbols or unbound or none_inputs:
                missing = list(dict.fromkeys(symbols)) or list(unbound)
                hint = ", ".join(f"'{d}' of input '{unbound[d]}'" for d in missing)
                if not hint:
                    hint = "of input(s) " + ", ".join(f"'{n}'" for n in none_inputs)
                raise GraphoptError(
                    f"cannot count MACs of node '{name}' ({op}): the shape of '{e.tensor}' is "
                    f"{_show(e.shape)} with unbound dim {hint}; bind it (--input-shape "
                    f"NAME=1x3x224x224, --batch N, or input_shapes={{...}})"
                ) from None
            if strict:
                raise GraphoptError(
                    f"cannot count MACs of node '{name}' ({op}): the shape of '{e.tensor}' is "
                    f"{_show(e.shape)} after shape inference (data-dependent?); pass strict=False to "
                    f"skip such nodes"
                ) from None
            unresolved.append(name)
            r = (0, 0, "shape unknown: not counted")
        if r is None:
            uncounted[op] += 1
            r = (0, 0, "no cost model")
        out_shape = info.shapes.get(node.output[0]) if node.output else None
        nodes.append(NodeCost(name, node.op_type, _domain(node), int(r[0]), int(r[1]),
                              out_shape, r[2]))
    if unresolved:
        log.info("%d node(s) with unknown shapes were not counted (first: %s)",
                    len(unresolved), unresolved[0])
    result = MacCount(
        total=sum(n.macs for n in nodes), flops=sum(n.flops for n in nodes), nodes=nodes,
        input_shapes={k: v for k, v in info.bound.items()},
        uncounted=dict(uncounted), unresolved=unresolved,
    )
    per_op: dict[str, int] = defaultdict(int)
    flops_op: dict[str, int] = defaultdict(int)
    for n in nodes:
        op = n.op_type if not n.domain else f"{n.domain}.{n.op_type}"
        result.per_node[n.name] = n.macs
        result.flops_per_node[n.name] = n.flops
        per_op[op] += n.macs
        flops_op[op] += n.flops
    order = sorted(flops_op, key=lambda k: (-per_op[k], -flops_op[k], k))
    result.per_op_type = {k: per_op[k] for k in order}
    result.flops_per_op_type = {k: flops_op[k] for k in order}
    return result
