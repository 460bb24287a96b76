"""The layers graphopt.testing.archs builds its architectures from: a GraphBuilder that
names nodes and initializers the way PyTorch's exporter does, and convolution, norm,
activation, linear and block helpers on top of it (all with seeded random weights)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dim = int | str

# BN scale ranges: ordinary layers, and the last BN of a residual branch (keeps the sum of
# many residual branches from blowing up with random weights).
_GAMMA = (0.5, 1.5)
_GAMMA_RESIDUAL = (0.1, 0.3)


# ----------------------------------------------------------------------------------------
# Graph builder
# ----------------------------------------------------------------------------------------


class GraphBuilder:
    """Accumulates nodes and initializers with unique, torch-like names.

    ``constant_nodes=True`` emits small constants (scalars, shapes, axes) as ``Constant``
    nodes, one per use, the way the TorchScript exporter does; otherwise they become shared
    initializers.
    """

    def __init__(self, name: str, *, seed: int = 0, opset: int = 17, constant_nodes: bool = False):
        if opset < 13:
            raise ValueError(f"opset {opset} is not supported (need >= 13)")
        self.name = name
        self.opset = opset
        self.constant_nodes = constant_nodes
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._const_cache: dict[tuple, str] = {}

    # names -------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        candidate, i = name, 0
        while candidate in self._names:
            i += 1
            candidate = f"{name}_{i}"
        self._names.add(candidate)
        return candidate

    # random tensors ----------------------------------------------------------------------
    def normal(self, shape, std: float) -> np.ndarray:
        a = self.rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(std)
        return a

    def uniform(self, shape, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size=shape).astype(np.float32)

    # tensors -----------------------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A small constant: a fresh Constant node, or a shared initializer."""
        arr = np.asarray(value, dtype=dtype)
        if self.constant_nodes:
            out = self.unique("onnx::Constant_output")
            self.nodes.append(helper.make_node(
                "Constant", [], [out], name=self.unique("/Constant"),
                value=numpy_helper.from_array(arr)))
            return out
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.initializer(f"const_{len(self._const_cache)}", arr)
        return self._const_cache[key]

    def op(self, op_type: str, inputs: Sequence[str], *, name: str = "",
           output: str | None = None, **attrs) -> str:
        node_name = self.unique(f"/{name}/{op_type}" if name else f"/{op_type}")
        out = self.unique(output or f"{node_name}_output_0")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    # opset-dependent spellings -----------------------------------------------------------
    def reduce_mean(self, x: str, axes: list[int], *, name: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(axes, np.int64)], name=name, keepdims=1)
        return self.op("ReduceMean", [x], name=name, axes=axes, keepdims=1)

    def unsqueeze(self, x: str, axes: list[int], *, name: str) -> str:
        return self.op("Unsqueeze", [x, self.const(axes, np.int64)], name=name)

    # model -------------------------------------------------------------------------------
    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs,
                                  initializer=self.initializers, doc_string=doc)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets,
                                  producer_name="graphopt.testing.archs",
                                  ir_version=helper.find_min_ir_version_for(opsets))
        return model


def image_input(batch: Dim, channels: int, image: int) -> onnx.ValueInfoProto:
    shape = [batch, channels, image, image]
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)


def logits_output(batch: Dim, classes: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding used by the MobileNets: nearest multiple of ``divisor``, never more
    than 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# ----------------------------------------------------------------------------------------
# Layers shared by the builders
# ----------------------------------------------------------------------------------------


def conv(b: GraphBuilder, x: str, cin: int, cout: int, k: int, *, stride: int = 1,
         group: int = 1, bias: bool = False, name: str) -> str:
    fan_in = cin // group * k * k
    inputs = [x, b.initializer(f"{name}.weight",
                               b.normal((cout, cin // group, k, k), math.sqrt(2.0 / fan_in)))]
    if bias:
        inputs.append(b.initializer(f"{name}.bias", b.normal((cout,), 0.01)))
    pad = (k - 1) // 2
    return b.op("Conv", inputs, name=name, dilations=[1, 1], group=group,
                kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])


def batchnorm(b: GraphBuilder, x: str, c: int, *, name: str,
              gamma: tuple[float, float] = _GAMMA, eps: float = 1e-5) -> str:
    inputs = [x,
              b.initializer(f"{name}.weight", b.uniform(c, *gamma)),
              b.initializer(f"{name}.bias", b.normal(c, 0.1)),
              b.initializer(f"{name}.running_mean", b.normal(c, 0.1)),
              b.initializer(f"{name}.running_var", b.uniform(c, 0.5, 1.5))]
    return b.op("BatchNormalization", inputs, name=name, epsilon=eps, momentum=0.9)


def activation(b: GraphBuilder, x: str, kind: str | None, *, name: str) -> str:
    """``relu``, ``relu6`` (Clip with min/max inputs), ``hardsigmoid`` (torch's 1/6, 0.5),
    ``hardswish`` (the HardSwish op, opset >= 14), ``hardswish_mul`` (x * HardSigmoid(x)),
    ``gelu_erf``, ``tanh`` or None."""
    if kind is None:
        return x
    if kind == "relu":
        return b.op("Relu", [x], name=name)
    if kind == "relu6":
        return b.op("Clip", [x, b.const(0.0), b.const(6.0)], name=name)
    if kind == "hardsigmoid":
        return b.op("HardSigmoid", [x], name=name, alpha=1.0 / 6, beta=0.5)
    if kind == "hardswish":
        if b.opset < 14:
            raise ValueError("HardSwish needs opset >= 14; use 'hardswish_mul'")
        return b.op("HardSwish", [x], name=name)
    if kind == "hardswish_mul":
        return b.op("Mul", [x, activation(b, x, "hardsigmoid", name=name)], name=name)
    if kind == "gelu_erf":
        h = b.op("Div", [x, b.const(math.sqrt(2.0))], name=name)
        h = b.op("Erf", [h], name=name)
        h = b.op("Add", [h, b.const(1.0)], name=name)
        h = b.op("Mul", [x, h], name=name)
        return b.op("Mul", [h, b.const(0.5)], name=name)
    if kind == "tanh":
        return b.op("Tanh", [x], name=name)
    raise ValueError(f"unknown activation {kind!r}")


def conv_bn_act(b: GraphBuilder, x: str, cin: int, cout: int, k: int, *, stride: int = 1,
                group: int = 1, act: str | None = "relu", gamma=_GAMMA, name: str) -> str:
    """Conv (no bias) -> BatchNormalization -> activation: torchvision's Conv2dNormActivation."""
    y = conv(b, x, cin, cout, k, stride=stride, group=group, name=f"{name}.0")
    y = batchnorm(b, y, cout, gamma=gamma, name=f"{name}.1")
    return activation(b, y, act, name=f"{name}.2")


def bn_act_conv(b: GraphBuilder, x: str, cin: int, cout: int, k: int, *,
                act: str = "relu", name: str) -> str:
    """Pre-activation ordering (DenseNet): BatchNormalization -> activation -> Conv."""
    y = batchnorm(b, x, cin, name=f"{name}.norm")
    y = activation(b, y, act, name=f"{name}.act")
    return conv(b, y, cin, cout, k, name=f"{name}.conv")


def linear(b: GraphBuilder, x: str, cin: int, cout: int, *, name: str, std: float = 0.01,
           output: str | None = None) -> str:
    """nn.Linear on a 2-D input, as torch exports it: Gemm with transB=1."""
    w = b.initializer(f"{name}.weight", b.normal((cout, cin), std))
    bias = b.initializer(f"{name}.bias", b.normal(cout, std))
    return b.op("Gemm", [x, w, bias], name=name, output=output, alpha=1.0, beta=1.0, transB=1)


def linear3d(b: GraphBuilder, x: str, cin: int, cout: int, *, name: str, std: float = 0.02) -> str:
    """nn.Linear on a >2-D input, as torch exports it: MatMul by W^T, then Add bias."""
    w = b.initializer(f"{name}.weight", b.normal((cin, cout), std))
    y = b.op("MatMul", [x, w], name=name)
    return b.op("Add", [y, b.initializer(f"{name}.bias", b.normal(cout, std))], name=name)


def layer_norm(b: GraphBuilder, x: str, c: int, *, name: str, eps: float = 1e-12) -> str:
    """LayerNorm over the last axis, decomposed as torch exports it below opset 17."""
    mean = b.reduce_mean(x, [-1], name=name)
    d = b.op("Sub", [x, mean], name=name)
    var = b.reduce_mean(b.op("Pow", [d, b.const(2.0)], name=name), [-1], name=name)
    std = b.op("Sqrt", [b.op("Add", [var, b.const(eps)], name=name)], name=name)
    y = b.op("Div", [d, std], name=name)
    y = b.op("Mul", [y, b.initializer(f"{name}.weight", 1.0 + b.normal(c, 0.02))], name=name)
    return b.op("Add", [y, b.initializer(f"{name}.bias", b.normal(c, 0.02))], name=name)


def classifier_head(b: GraphBuilder, x: str, cin: int, classes: int, *, name: str,
                    hidden: int = 0, act: str | None = None) -> str:
    """GlobalAveragePool -> Flatten -> [Gemm -> act] -> Gemm producing ``logits``."""
    y = b.op("GlobalAveragePool", [x], name=f"{name}.pool")
    y = b.op("Flatten", [y], name=f"{name}.flatten", axis=1)
    if hidden:
        y = activation(b, linear(b, y, cin, hidden, name=f"{name}.0"), act, name=f"{name}.1")
        cin = hidden
    return linear(b, y, cin, classes, name=f"{name}.fc", output="logits")


def squeeze_excite(b: GraphBuilder, x: str, c: int, squeeze: int, *, name: str) -> str:
    s = b.op("GlobalAveragePool", [x], name=f"{name}.avgpool")
    s = activation(b, conv(b, s, c, squeeze, 1, bias=True, name=f"{name}.fc1"), "relu",
                   name=f"{name}.relu")
    s = activation(b, conv(b, s, squeeze, c, 1, bias=True, name=f"{name}.fc2"), "hardsigmoid",
                   name=f"{name}.gate")
    return b.op("Mul", [s, x], name=name)


def inverted_residual(b: GraphBuilder, x: str, cin: int, hidden: int, cout: int, *, k: int,
                      stride: int, act: str, se_channels: int = 0, name: str) -> str:
    """MobileNet V2/V3 block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ x)."""
    residual = stride == 1 and cin == cout
    h = x
    if hidden != cin:
        h = conv_bn_act(b, h, cin, hidden, 1, act=act, name=f"{name}.expand")
    h = conv_bn_act(b, h, hidden, hidden, k, stride=stride, group=hidden, act=act,
                    name=f"{name}.dw")
    if se_channels:
        h = squeeze_excite(b, h, hidden, se_channels, name=f"{name}.se")
    h = conv_bn_act(b, h, hidden, cout, 1, act=None, name=f"{name}.project",
                    gamma=_GAMMA_RESIDUAL if residual else _GAMMA)
    return b.op("Add", [h, x], name=name) if residual else h


def bottleneck(b: GraphBuilder, x: str, cin: int, planes: int, *, stride: int, name: str) -> str:
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), projection shortcut if needed."""
    cout = planes * 4
    h = conv_bn_act(b, x, cin, planes, 1, name=f"{name}.conv1")
    h = conv_bn_act(b, h, planes, planes, 3, stride=stride, name=f"{name}.conv2")
    h = conv_bn_act(b, h, planes, cout, 1, act=None, gamma=_GAMMA_RESIDUAL, name=f"{name}.conv3")
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = conv_bn_act(b, x, cin, cout, 1, stride=stride, act=None,
                               name=f"{name}.downsample")
    return activation(b, b.op("Add", [h, shortcut], name=name), "relu", name=f"{name}.relu")


