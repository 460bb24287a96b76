"""Small hand-built CNNs for the prune tests (used until/unless graphopt.testing.archs has them)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: np.ndarray, base: str = "w") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs, base: str | None = None, **attrs) -> str:
        out = self.name((base or op.lower()) + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "node", **attrs))
        return out

    def conv(self, x, cin, cout, k=1, stride=1, group=1, bias=True):
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.05).astype(np.float32), "b"))
        return self.node("Conv", ins, "conv", kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=group)

    def bn(self, x, c):
        r = self.rng
        params = [
            (np.abs(r.standard_normal(c)) * 0.5 + 0.5).astype(np.float32),
            (r.standard_normal(c) * 0.1).astype(np.float32),
            (r.standard_normal(c) * 0.1).astype(np.float32),
            (np.abs(r.standard_normal(c)) * 0.5 + 0.5).astype(np.float32),
        ]
        return self.node("BatchNormalization", [x] + [self.const(p, "bn") for p in params], "bn")

    def relu(self, x):
        return self.node("Relu", [x])

    def relu6(self, x):
        return self.node("Clip", [x, self.const(np.array(0, np.float32), "lo"),
                                  self.const(np.array(6, np.float32), "hi")], "clip")

    def cbr(self, x, cin, cout, k=1, stride=1, group=1, act="relu"):
        y = self.bn(self.conv(x, cin, cout, k, stride, group, bias=False), cout)
        if act == "relu":
            y = self.relu(y)
        elif act == "relu6":
            y = self.relu6(y)
        return y

    def head(self, x, c, classes=10, flatten="Flatten"):
        y = self.node("GlobalAveragePool", [x])
        if flatten == "Flatten":
            y = self.node("Flatten", [y], axis=1)
        else:
            y = self.node("Reshape", [y, self.const(np.array([-1, c], np.int64), "shape")])
        w = (self.rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)
        return self.node("Gemm", [y, self.const(w), self.const(np.zeros(classes, np.float32), "b")],
                         "logits", transB=1)

    def model(self, inp, out, shape, opset=13, out_shape=None) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape or [shape[0], None])], self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def _bottleneck(b: "Builder", x: str, cin: int, mid: int, stride: int) -> tuple[str, int]:
    """1x1 -> 3x3 (stride) -> 1x1 x4, plus the identity or a projection shortcut."""
    cout = mid * 4
    y = b.cbr(x, cin, mid, 1)
    y = b.cbr(y, mid, mid, 3, stride)
    y = b.cbr(y, mid, cout, 1, act=None)
    sc = x if (cin == cout and stride == 1) else b.cbr(x, cin, cout, 1, stride, act=None)
    return b.relu(b.node("Add", [y, sc])), cout


def resnet_like(width=16, image=32, seed=0) -> onnx.ModelProto:
    """Stem + 2 stages of 2 bottlenecks (1x1 -> 3x3 -> 1x1 x4, projection shortcut) + FC."""
    b = Builder(seed)
    x = b.cbr("input", 3, width, 3)
    cin = width
    for stage, mid in enumerate([width, width * 2]):
        for blk in range(2):
            stride = 2 if (stage > 0 and blk == 0) else 1
            x, cin = _bottleneck(b, x, cin, mid, stride)
    out = b.head(x, cin)
    return b.model("input", out, [2, 3, image, image])


def mobilenet_v2_like(width=16, image=32, seed=0) -> onnx.ModelProto:
    """Stem + inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1, residual)."""
    b = Builder(seed)
    x = b.cbr("input", 3, width, 3, 2, act="relu6")
    cin = width
    for cout, stride, reps in [(width, 1, 2), (width * 2, 2, 2)]:
        for i in range(reps):
            s = stride if i == 0 else 1
            hid = cin * 4
            y = b.cbr(x, cin, hid, 1, act="relu6")
            y = b.cbr(y, hid, hid, 3, s, group=hid, act="relu6")
            y = b.cbr(y, hid, cout, 1, act=None)
            x = b.node("Add", [x, y]) if (s == 1 and cin == cout) else y
            cin = cout
    x = b.cbr(x, cin, cin * 4, 1, act="relu6")
    out = b.head(x, cin * 4, flatten="Reshape")
    return b.model("input", out, [2, 3, image, image])


def dense_like(growth=8, image=32, seed=0) -> onnx.ModelProto:
    """Two dense blocks (BN-ReLU-1x1-BN-ReLU-3x3, concatenated) with a transition, then an
    Inception-style block with parallel branches concatenated."""
    b = Builder(seed)
    x = b.conv("input", 3, 16, 3)
    c = 16
    for block in range(2):
        for _ in range(3):
            y = b.relu(b.bn(x, c))
            y = b.conv(y, c, 4 * growth, 1, bias=False)
            y = b.relu(b.bn(y, 4 * growth))
            y = b.conv(y, 4 * growth, growth, 3, bias=False)
            x = b.node("Concat", [x, y], axis=1)
            c += growth
        if block == 0:
            x = b.conv(b.relu(b.bn(x, c)), c, c // 2, 1, bias=False)
            c //= 2
            x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.relu(b.bn(x, c))
    br1 = b.cbr(x, c, 16, 1)
    br2 = b.cbr(b.cbr(x, c, 12, 1), 12, 16, 3)
    br3 = b.cbr(b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), c, 8, 1)
    x = b.node("Concat", [br1, br2, br3], axis=1)
    out = b.head(x, 40)
    return b.model("input", out, [2, 3, image, image])


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul from inferred static shapes
    (a stand-in until graphopt.analysis has a MAC counter)."""
    m = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            out, w = shapes[n.output[0]], shapes[n.input[1]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            a, out = shapes[n.input[0]], shapes[n.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            total += int(np.prod(out)) * (a[0] if trans_a else a[1])
        elif n.op_type == "MatMul":
            a, out = shapes[n.input[0]], shapes[n.output[0]]
            total += int(np.prod(out)) * a[-1]
    return total


def count_params(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT))


def resnet50_full(image=224, classes=1000, seed=0) -> onnx.ModelProto:
    """ResNet-50 v1.5 topology (random He-initialized weights, BN with random statistics)."""
    b = Builder(seed)
    x = b.cbr("input", 3, 64, 7, 2)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (mid, reps) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for i in range(reps):
            stride = 2 if (stage > 0 and i == 0) else 1
            x, cin = _bottleneck(b, x, cin, mid, stride)
    out = b.head(x, cin, classes)
    return b.model("input", out, [1, 3, image, image])


def mobilenet_v2_full(image=224, classes=1000, seed=0) -> onnx.ModelProto:
    """MobileNetV2 (width 1.0) topology with random weights."""
    b = Builder(seed)
    x = b.cbr("input", 3, 32, 3, 2, act="relu6")
    cin = 32
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for t, c, n, s in cfg:
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            y = x
            if t != 1:
                y = b.cbr(y, cin, hid, 1, act="relu6")
            y = b.cbr(y, hid, hid, 3, stride, group=hid, act="relu6")
            y = b.cbr(y, hid, c, 1, act=None)
            x = b.node("Add", [x, y]) if (stride == 1 and cin == c) else y
            cin = c
    x = b.cbr(x, cin, 1280, 1, act="relu6")
    out = b.head(x, 1280, classes, flatten="Reshape")
    return b.model("input", out, [1, 3, image, image])
