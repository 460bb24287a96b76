"""A graph fuzzer: a hypothesis strategy for random *valid* ONNX models.

    from graphopt.testing.fuzz import onnx_models
    @given(onnx_models())
    def test_pass(model): ...

Models are random DAGs over an image tensor [N, C, H, W] (N symbolic or fixed) with
shapes tracked as they grow: Conv, ConvTranspose, BatchNormalization, activations (Relu,
Clip, LeakyRelu, Sigmoid, HardSigmoid, Softmax), Add/Mul (same shape or broadcast
constants, some from Constant nodes), Concat, Split, Pad, Slice, Transpose, MaxPool,
AveragePool, GlobalAveragePool, Identity, Dropout; then Flatten/Reshape to [N, F] and
MatMul/Gemm/Add/Relu on the flat side; optionally an If whose branches read outer-scope
tensors. Weights are initializers. Some nodes are duplicated (work for CSE) and some
branches are dead (work for DCE). Opsets 13-19.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

OPSETS = tuple(range(13, 20))
IMAGE_OPS = ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid",
             "HardSigmoid", "AddSame", "MulConst", "AddConstNode", "Concat", "Split", "Pad", "Slice",
             "TransposeHW", "MaxPool", "AveragePool", "Identity", "Dropout", "Softmax", "Duplicate",
             "Dead")
FLAT_OPS = ("MatMul", "Gemm", "MatMul", "Gemm", "AddBias", "Relu", "Sigmoid", "Softmax", "Identity", "Duplicate")


class _Builder:
    def __init__(self, draw, opset: int, seed: int) -> None:
        self.draw = draw
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr: np.ndarray, base: str = "w") -> str:
        name = self.name(base)
        self.inits.append(nh.from_array(np.asarray(arr), name))
        return name

    def weight(self, shape, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * s).astype(np.float32))

    def node(self, op: str, inputs, n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(h.make_node(op, list(inputs), outs, name=self.name("n_" + op), **attrs))
        return outs


def _image_step(b: _Builder, draw, pool: list, x: tuple) -> tuple | None:
    """One op on image tensor x = (name, C, H, W). Returns the new image tensor."""
    name, c, hh, ww = x
    op = draw(st.sampled_from(IMAGE_OPS))
    if op == "Conv":
        k = draw(st.sampled_from([1, 3]))
        cout = draw(st.integers(1, 6))
        group = c if draw(st.booleans()) and cout == c else 1
        stride = draw(st.sampled_from([1, 1, 2])) if min(hh, ww) >= 4 else 1
        ins = [name, b.weight((cout, c // group, k, k))]
        if draw(st.booleans()):
            ins.append(b.weight((cout,), 0.5))
        (y,) = b.node("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=group)
        ho, wo = (hh + 2 * (k // 2) - k) // stride + 1, (ww + 2 * (k // 2) - k) // stride + 1
        return (y, cout, ho, wo)
    if op == "ConvTranspose":
        cout = draw(st.integers(1, 4))
        ins = [name, b.weight((c, cout, 3, 3))]
        if draw(st.booleans()):
            ins.append(b.weight((cout,), 0.5))
        (y,) = b.node("ConvTranspose", ins, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        return (y, cout, hh, ww)
    if op == "BatchNormalization":
        scale = b.const((b.rng.uniform(0.5, 1.5, c)).astype(np.float32))
        bias = b.const((b.rng.standard_normal(c) * 0.1).astype(np.float32))
        mean = b.const((b.rng.standard_normal(c) * 0.1).astype(np.float32))
        var = b.const((b.rng.uniform(0.5, 2.0, c)).astype(np.float32))
        (y,) = b.node("BatchNormalization", [name, scale, bias, mean, var], epsilon=1e-5)
        return (y, c, hh, ww)
    if op in ("Relu", "Sigmoid", "Identity"):
        (y,) = b.node(op, [name])
        return (y, c, hh, ww)
    if op == "Clip":
        lo = b.const(np.array(-draw(st.sampled_from([0.0, 1.0])), np.float32))
        hi = b.const(np.array(6.0, np.float32))
        (y,) = b.node("Clip", [name, lo, hi])
        return (y, c, hh, ww)
    if op == "LeakyRelu":
        (y,) = b.node("LeakyRelu", [name], alpha=0.1)
        return (y, c, hh, ww)
    if op == "HardSigmoid":
        (y,) = b.node("HardSigmoid", [name], alpha=1 / 6, beta=0.5)
        return (y, c, hh, ww)
    if op == "Softmax":
        (y,) = b.node("Softmax", [name], axis=1)
        return (y, c, hh, ww)
    if op == "Dropout":
        (y,) = b.node("Dropout", [name])
        return (y, c, hh, ww)
    if op == "AddSame":
        same = [t for t in pool if t[1:] == (c, hh, ww) and t[0] != name]
        other = draw(st.sampled_from(same)) if same else x
        (y,) = b.node(draw(st.sampled_from(["Add", "Mul"])), [name, other[0]])
        return (y, c, hh, ww)
    if op == "MulConst":
        k = b.const((b.rng.uniform(0.5, 1.5, (c, 1, 1))).astype(np.float32))
        (y,) = b.node("Mul", [name, k])
        return (y, c, hh, ww)
    if op == "AddConstNode":
        (k,) = b.node("Constant", [], value=nh.from_array((b.rng.standard_normal((c, 1, 1)) * 0.1).astype(np.float32)))
        (y,) = b.node("Add", [name, k])
        return (y, c, hh, ww)
    if op == "Concat":
        same = [t for t in pool if t[2:] == (hh, ww)]
        other = draw(st.sampled_from(same)) if same else x
        (y,) = b.node("Concat", [name, other[0]], axis=1)
        return (y, c + other[1], hh, ww)
    if op == "Split":
        if c < 2:
            return None
        first = draw(st.integers(1, c - 1))
        split = b.const(np.array([first, c - first], np.int64))
        y1, y2 = b.node("Split", [name, split], n_out=2, axis=1)
        pool.append((y2, c - first, hh, ww))
        return (y1, first, hh, ww)
    if op == "Pad":
        pads = b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
        (y,) = b.node("Pad", [name, pads], mode="constant")
        return (y, c, hh + 2, ww + 2)
    if op == "Slice":
        if hh < 2:
            return None
        start = draw(st.integers(0, hh - 2))
        ins = [name, b.const(np.array([start], np.int64)), b.const(np.array([hh], np.int64)),
               b.const(np.array([2], np.int64))]
        (y,) = b.node("Slice", ins)
        return (y, c, hh - start, ww)
    if op == "TransposeHW":
        (y,) = b.node("Transpose", [name], perm=[0, 1, 3, 2])
        return (y, c, ww, hh)
    if op in ("MaxPool", "AveragePool"):
        if draw(st.booleans()) and min(hh, ww) >= 2:
            (y,) = b.node(op, [name], kernel_shape=[2, 2], strides=[2, 2])
            return (y, c, hh // 2, ww // 2)
        attrs = {"count_include_pad": 0} if op == "AveragePool" else {}
        (y,) = b.node(op, [name], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], **attrs)
        return (y, c, hh, ww)
    if op == "Duplicate":
        # repeat the producer of x with the same inputs: a common subexpression
        prod = next((n for n in b.nodes if name in n.output and n.op_type not in ("Split", "Constant")), None)
        if prod is None:
            return None
        dup = onnx.NodeProto()
        dup.CopyFrom(prod)
        dup.name = b.name("dup")
        del dup.output[:]
        dup.output.extend([b.name("dup_out") for _ in prod.output])
        b.nodes.append(dup)
        (y,) = b.node("Add", [name, dup.output[0]])
        return (y, c, hh, ww)
    if op == "Dead":
        b.node("Relu", [b.node("Sigmoid", [name])[0]])   # nothing reads it
        return None
    raise AssertionError(op)


def _flat_step(b: _Builder, draw, x: tuple) -> tuple:
    name, f = x
    op = draw(st.sampled_from(FLAT_OPS))
    if op == "MatMul":
        g = draw(st.integers(1, 8))
        (y,) = b.node("MatMul", [name, b.weight((f, g), 1 / np.sqrt(f))])
        return (y, g)
    if op == "Gemm":
        g = draw(st.integers(1, 8))
        trans = draw(st.booleans())
        w = b.weight((g, f) if trans else (f, g), 1 / np.sqrt(f))
        ins = [name, w] + ([b.weight((g,), 0.5)] if draw(st.booleans()) else [])
        (y,) = b.node("Gemm", ins, transB=int(trans), alpha=1.0, beta=1.0)
        return (y, g)
    if op == "AddBias":
        (y,) = b.node("Add", [name, b.weight((f,), 0.5)])
        return (y, f)
    if op == "Softmax":
        (y,) = b.node("Softmax", [name], axis=-1)
        return (y, f)
    if op == "Duplicate":
        (d,) = b.node("Relu", [name])
        (e,) = b.node("Relu", [name])
        (y,) = b.node("Add", [d, e])
        return (y, f)
    (y,) = b.node(op, [name])
    return (y, f)


@st.composite
def onnx_models(draw, min_image_ops: int = 3, max_image_ops: int = 10, max_flat_ops: int = 3, opsets=OPSETS,
                allow_if: bool = True) -> onnx.ModelProto:
    """A random valid model: input 'x' [N|1|2, C, H, W] float32, one or two outputs."""
    opset = draw(st.sampled_from(list(opsets)))
    b = _Builder(draw, opset, draw(st.integers(0, 2**16)))
    batch = draw(st.sampled_from(["N", 1, 2]))
    c, hh, ww = draw(st.integers(1, 4)), draw(st.integers(2, 8)), draw(st.integers(2, 8))
    x = ("x", c, hh, ww)
    pool = [x]
    for _ in range(draw(st.integers(min_image_ops, max_image_ops))):
        y = _image_step(b, draw, pool, x)
        if y is not None:
            pool.append(y)
            x = y
    if x[0] == "x":
        (y,) = b.node("Identity", ["x"])
        x = (y, *x[1:])
    img_out = h.make_tensor_value_info(x[0], T.FLOAT, [batch, x[1], x[2], x[3]])
    outputs = [img_out]
    if draw(st.booleans()):
        # to the flat side
        name, c, hh, ww = x
        if draw(st.booleans()):
            (g,) = b.node("GlobalAveragePool", [name])
            (flat,) = b.node("Flatten", [g], axis=1)
            f = c
        elif draw(st.booleans()):
            (flat,) = b.node("Flatten", [name], axis=1)
            f = c * hh * ww
        else:
            (flat,) = b.node("Reshape", [name, b.const(np.array([0, -1], np.int64))])
            f = c * hh * ww
        v = (flat, f)
        for _ in range(draw(st.integers(1, max_flat_ops))):
            v = _flat_step(b, draw, v)
        if allow_if and draw(st.booleans()):
            (s,) = b.node("ReduceSum", [v[0]], keepdims=0)
            (cond,) = b.node("Greater", [s, b.const(np.array(0, np.float32))])
            then_out, else_out = b.name("then_out"), b.name("else_out")
            # sometimes the then-branch reads a tensor nothing in the main graph uses
            (then_in,) = b.node("Sigmoid", [v[0]]) if draw(st.booleans()) else (v[0],)
            then_g = h.make_graph([h.make_node("Relu", [then_in], [then_out])], b.name("then"), [],
                                  [h.make_tensor_value_info(then_out, T.FLOAT, [batch, v[1]])])
            else_g = h.make_graph([h.make_node("Neg", [v[0]], [else_out])], b.name("else"), [],
                                  [h.make_tensor_value_info(else_out, T.FLOAT, [batch, v[1]])])
            (y,) = b.node("If", [cond], then_branch=then_g, else_branch=else_g)
            v = (y, v[1])
        outputs = [h.make_tensor_value_info(v[0], T.FLOAT, [batch, v[1]])]
        if draw(st.booleans()):
            outputs.append(img_out)
    inp = h.make_tensor_value_info("x", T.FLOAT, [batch, pool[0][1], pool[0][2], pool[0][3]])
    graph = h.make_graph(b.nodes, "fuzz", [inp], outputs, b.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="graphopt-fuzz")
    model.ir_version = 8
    return model
