"""Reference architectures as ONNX models, built with ``onnx.helper`` and numpy only.

Every builder returns an :class:`onnx.ModelProto` with seeded random weights stored as
initializers, shaped the way PyTorch's exporter lays these networks out: BatchNormalization
is *not* folded into the convolutions, ReLU6 is ``Clip`` with min/max inputs, HardSwish can be
``x * HardSigmoid(x)``, BERT's LayerNorm is the decomposed ReduceMean/Sub/Pow/... chain and its
GELU is the erf form. They exist so that tests and benchmarks of the optimizer have realistic
topologies without torch, torchvision or network access.

The full-size variants match the torchvision / Hugging Face parameter counts exactly
(``parameter_count(resnet50()) == 25_557_032``); small variants for fast tests come from the
``width``, ``image``, ``blocks`` and ``max_repeats`` knobs::

    from graphopt.testing import archs
    tiny = archs.resnet50(image=32, width=0.125, blocks=(1, 1, 1, 1))

BatchNorm statistics are random but sane (running variance in [0.5, 1.5]) and the last BN of
every residual branch has a small scale, so activations stay in a moderate range for random
inputs instead of growing with depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "GraphBuilder",
    "bert",
    "densenet_like",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "parameter_count",
    "resnet50",
]

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


def _image_input(batch: Dim, channels: int, image: int) -> onnx.ValueInfoProto:
    shape = [batch, channels, image, image]
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)


def _logits_output(batch: Dim, classes: int) -> onnx.ValueInfoProto:
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


# ----------------------------------------------------------------------------------------
# CNNs
# ----------------------------------------------------------------------------------------


def resnet50(batch: Dim = 1, image: int = 224, width: float = 1.0, seed: int = 0,
             opset: int = 17, *, blocks: Sequence[int] = (3, 4, 6, 3),
             num_classes: int = 1000, in_channels: int = 3) -> onnx.ModelProto:
    """ResNet-50 (torchvision v1.5 layout). ``width`` scales every channel count;
    ``blocks`` sets the bottlenecks per stage. Full size: 25,557,032 parameters."""
    b = GraphBuilder("resnet50", seed=seed, opset=opset)

    def ch(c: int) -> int:
        return max(1, int(round(c * width)))

    stem = ch(64)
    y = conv_bn_act(b, "input", in_channels, stem, 7, stride=2, name="stem")
    y = b.op("MaxPool", [y], name="maxpool", ceil_mode=0, kernel_shape=[3, 3], pads=[1] * 4,
             strides=[2, 2])
    cin = stem
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
        for i in range(n):
            stride = 2 if i == 0 and stage > 0 else 1
            y = bottleneck(b, y, cin, ch(planes), stride=stride, name=f"layer{stage + 1}.{i}")
            cin = ch(planes) * 4
    classifier_head(b, y, cin, num_classes, name="head")
    return b.model([_image_input(batch, in_channels, image)], [_logits_output(batch, num_classes)],
                   doc=f"ResNet-50 blocks={tuple(blocks)} width={width} image={image}")


_MOBILENET_V2 = [  # expand ratio t, channels c, repeats n, stride s
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def mobilenet_v2(batch: Dim = 1, image: int = 224, width: float = 1.0, seed: int = 0,
                 opset: int = 17, *, max_repeats: int | None = None,
                 num_classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV2 (torchvision layout): inverted residuals, depthwise convs, ReLU6 as Clip.
    ``max_repeats`` caps the blocks per stage for tiny variants. Full size: 3,504,872 params."""
    b = GraphBuilder("mobilenet_v2", seed=seed, opset=opset)
    cin = make_divisible(32 * width)
    y = conv_bn_act(b, "input", 3, cin, 3, stride=2, act="relu6", name="features.0")
    idx = 1
    for t, c, n, s in _MOBILENET_V2:
        cout = make_divisible(c * width)
        for i in range(min(n, max_repeats or n)):
            y = inverted_residual(b, y, cin, int(round(cin * t)), cout, k=3,
                                  stride=s if i == 0 else 1, act="relu6", name=f"features.{idx}")
            cin = cout
            idx += 1
    last = make_divisible(1280 * max(1.0, width))
    y = conv_bn_act(b, y, cin, last, 1, act="relu6", name=f"features.{idx}")
    classifier_head(b, y, last, num_classes, name="classifier")
    return b.model([_image_input(batch, 3, image)], [_logits_output(batch, num_classes)],
                   doc=f"MobileNetV2 width={width} image={image}")


_MOBILENET_V3_SMALL = [  # kernel, expanded, out, squeeze-excite, activation, stride
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
]


def mobilenet_v3_small(batch: Dim = 1, image: int = 224, width: float = 1.0, seed: int = 0,
                       opset: int = 17, *, hardswish: str = "mul",
                       num_classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV3-Small (torchvision layout) with squeeze-excite blocks.

    ``hardswish="mul"`` spells HardSwish as ``x * HardSigmoid(x)`` (what exporters emit below
    opset 14); ``hardswish="op"`` uses the HardSwish op. Full size: 2,542,856 params."""
    if hardswish not in ("mul", "op"):
        raise ValueError("hardswish must be 'mul' or 'op'")
    hs = "hardswish_mul" if hardswish == "mul" else "hardswish"
    b = GraphBuilder("mobilenet_v3_small", seed=seed, opset=opset)
    cin = make_divisible(16 * width)
    y = conv_bn_act(b, "input", 3, cin, 3, stride=2, act=hs, name="features.0")
    for i, (k, exp, out, se, act, s) in enumerate(_MOBILENET_V3_SMALL, start=1):
        hidden, cout = make_divisible(exp * width), make_divisible(out * width)
        y = inverted_residual(b, y, cin, hidden, cout, k=k, stride=s,
                              act="relu" if act == "RE" else hs,
                              se_channels=make_divisible(hidden // 4) if se else 0,
                              name=f"features.{i}")
        cin = cout
    last_conv = 6 * cin
    y = conv_bn_act(b, y, cin, last_conv, 1, act=hs,
                    name=f"features.{len(_MOBILENET_V3_SMALL) + 1}")
    classifier_head(b, y, last_conv, num_classes, name="classifier",
                    hidden=make_divisible(1024 * width), act=hs)
    return b.model([_image_input(batch, 3, image)], [_logits_output(batch, num_classes)],
                   doc=f"MobileNetV3-Small width={width} image={image} hardswish={hardswish}")


def densenet_like(batch: Dim = 1, image: int = 32, width: float = 1.0, seed: int = 0,
                  opset: int = 17, *, blocks: Sequence[int] = (3, 3, 3), growth: int = 8,
                  bottleneck_factor: int = 4, compression: float = 0.5,
                  num_classes: int = 10) -> onnx.ModelProto:
    """A small DenseNet: every layer sees the Concat of all earlier feature maps of its block
    (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3), transitions are BN-ReLU-Conv1x1-AveragePool."""
    b = GraphBuilder("densenet_like", seed=seed, opset=opset)
    growth = max(1, int(round(growth * width)))
    c = 2 * growth
    y = conv_bn_act(b, "input", 3, c, 3, name="stem")
    for bi, n in enumerate(blocks):
        feats = [y]
        for li in range(n):
            name = f"block{bi}.layer{li}"
            x = feats[0] if len(feats) == 1 else b.op("Concat", feats, name=name, axis=1)
            cin = c + li * growth
            h = bn_act_conv(b, x, cin, bottleneck_factor * growth, 1, name=f"{name}.a")
            feats.append(bn_act_conv(b, h, bottleneck_factor * growth, growth, 3,
                                     name=f"{name}.b"))
        y = b.op("Concat", feats, name=f"block{bi}", axis=1)
        c += n * growth
        if bi < len(blocks) - 1:
            cout = max(1, int(c * compression))
            y = bn_act_conv(b, y, c, cout, 1, name=f"transition{bi}")
            y = b.op("AveragePool", [y], name=f"transition{bi}", kernel_shape=[2, 2],
                     strides=[2, 2], pads=[0] * 4, ceil_mode=0, count_include_pad=1)
            c = cout
    y = activation(b, batchnorm(b, y, c, name="final.norm"), "relu", name="final.act")
    classifier_head(b, y, c, num_classes, name="classifier")
    return b.model([_image_input(batch, 3, image)], [_logits_output(batch, num_classes)],
                   doc=f"DenseNet-like blocks={tuple(blocks)} growth={growth} image={image}")


# ----------------------------------------------------------------------------------------
# BERT
# ----------------------------------------------------------------------------------------


def _dynamic_reshape(b: GraphBuilder, x: str, keep: int, tail: Sequence[int], *, name: str) -> str:
    """``x.view(x.size()[:keep] + tail)`` the way the TorchScript exporter spells it:
    Shape -> Gather -> Unsqueeze per kept dim, Concat with the constant tail, Reshape."""
    shape = b.op("Shape", [x], name=name)
    dims = [b.unsqueeze(b.op("Gather", [shape, b.const(i, np.int64)], name=name, axis=0), [0],
                        name=name) for i in range(keep)]
    target = b.op("Concat", [*dims, b.const(list(tail), np.int64)], name=name, axis=0)
    return b.op("Reshape", [x, target], name=name)


def _bert_layer(b: GraphBuilder, x: str, mask: str, *, hidden: int, heads: int,
                intermediate: int, eps: float, name: str) -> str:
    dh = hidden // heads

    def heads_view(t: str, perm: list[int], tag: str) -> str:
        t = _dynamic_reshape(b, t, 2, (heads, dh), name=f"{name}.attention.self.{tag}")
        return b.op("Transpose", [t], name=f"{name}.attention.self.{tag}", perm=perm)

    att = f"{name}.attention.self"
    q = heads_view(linear3d(b, x, hidden, hidden, name=f"{att}.query"), [0, 2, 1, 3], "q")
    k = heads_view(linear3d(b, x, hidden, hidden, name=f"{att}.key"), [0, 2, 3, 1], "k")
    v = heads_view(linear3d(b, x, hidden, hidden, name=f"{att}.value"), [0, 2, 1, 3], "v")
    scores = b.op("MatMul", [q, k], name=att)
    scores = b.op("Div", [scores, b.const(math.sqrt(dh))], name=att)
    scores = b.op("Add", [scores, mask], name=att)
    probs = b.op("Softmax", [scores], name=att, axis=-1)
    ctx = b.op("MatMul", [probs, v], name=att)
    ctx = b.op("Transpose", [ctx], name=att, perm=[0, 2, 1, 3])
    ctx = _dynamic_reshape(b, ctx, 2, (hidden,), name=f"{att}.ctx")

    out = linear3d(b, ctx, hidden, hidden, name=f"{name}.attention.output.dense")
    out = b.op("Add", [out, x], name=f"{name}.attention.output")
    x = layer_norm(b, out, hidden, eps=eps, name=f"{name}.attention.output.LayerNorm")

    h = linear3d(b, x, hidden, intermediate, name=f"{name}.intermediate.dense")
    h = activation(b, h, "gelu_erf", name=f"{name}.intermediate.gelu")
    h = linear3d(b, h, intermediate, hidden, name=f"{name}.output.dense")
    h = b.op("Add", [h, x], name=f"{name}.output")
    return layer_norm(b, h, hidden, eps=eps, name=f"{name}.output.LayerNorm")


def bert(layers: int = 12, hidden: int = 768, heads: int = 12, intermediate: int = 3072,
         vocab: int = 30522, seq: Dim = "seq", batch: Dim = "batch", seed: int = 0,
         opset: int = 17, *, max_position: int = 512, type_vocab: int = 2,
         pooler: bool = True, mask_value: float = -10000.0, eps: float = 1e-12) -> onnx.ModelProto:
    """BERT encoder laid out as torch exports Hugging Face's BertModel (eager attention).

    Inputs ``input_ids`` and ``attention_mask`` (int64 [batch, seq]); outputs
    ``last_hidden_state`` [batch, seq, hidden] and, with ``pooler``, ``pooler_output``
    [batch, hidden]. Small constants are Constant nodes, one per use, as in a TorchScript
    export. Full size: 109,482,240 parameters (~438 MB float32)."""
    if hidden % heads:
        raise ValueError("hidden must be a multiple of heads")
    b = GraphBuilder("bert", seed=seed, opset=opset, constant_nodes=True)
    ids, mask = "input_ids", "attention_mask"

    # embeddings: word + token type (buffered zeros) + position (buffered arange[:seq])
    emb = "embeddings"
    word = b.initializer(f"{emb}.word_embeddings.weight", b.normal((vocab, hidden), 0.02))
    pos = b.initializer(f"{emb}.position_embeddings.weight", b.normal((max_position, hidden), 0.02))
    tt = b.initializer(f"{emb}.token_type_embeddings.weight", b.normal((type_vocab, hidden), 0.02))
    pos_buf = b.initializer(f"{emb}.position_ids", np.arange(max_position, dtype=np.int64)[None])
    tt_buf = b.initializer(f"{emb}.token_type_ids", np.zeros((1, max_position), np.int64))
    shape = b.op("Shape", [ids], name=emb)
    seq_len = b.unsqueeze(b.op("Gather", [shape, b.const(1, np.int64)], name=emb, axis=0), [0],
                          name=emb)

    def seq_slice(buf: str) -> str:
        return b.op("Slice", [buf, b.const([0], np.int64), seq_len, b.const([1], np.int64),
                              b.const([1], np.int64)], name=emb)

    token_types = b.op("Expand", [seq_slice(tt_buf), shape], name=emb)
    x = b.op("Gather", [word, ids], name=f"{emb}.word_embeddings")
    x = b.op("Add", [x, b.op("Gather", [tt, token_types], name=f"{emb}.token_type_embeddings")],
             name=emb)
    positions = b.op("Gather", [pos, seq_slice(pos_buf)], name=f"{emb}.position_embeddings")
    x = b.op("Add", [x, positions], name=emb)
    x = layer_norm(b, x, hidden, eps=eps, name=f"{emb}.LayerNorm")

    # extended attention mask: (1 - mask[:, None, None, :]) * mask_value
    m = b.unsqueeze(mask, [1, 2], name="mask")
    m = b.op("Cast", [m], name="mask", to=TensorProto.FLOAT)
    m = b.op("Sub", [b.const(1.0), m], name="mask")
    m = b.op("Mul", [m, b.const(mask_value)], name="mask")

    for i in range(layers):
        x = _bert_layer(b, x, m, hidden=hidden, heads=heads, intermediate=intermediate, eps=eps,
                        name=f"encoder.layer.{i}")
    assert b.nodes[-1].output[0] == x
    b.nodes[-1].output[0] = x = b.unique("last_hidden_state")  # name the final LayerNorm's output
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             [batch, seq, hidden])]
    if pooler:
        first = b.op("Gather", [x, b.const(0, np.int64)], name="pooler", axis=1)
        p = linear(b, first, hidden, hidden, name="pooler.dense", std=0.02)
        b.op("Tanh", [p], name="pooler", output="pooler_output")
        outputs.append(helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT,
                                                     [batch, hidden]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [batch, seq])
              for n in (ids, mask)]
    return b.model(inputs, outputs,
                   doc=f"BERT layers={layers} hidden={hidden} heads={heads} "
                       f"intermediate={intermediate} vocab={vocab}")


# ----------------------------------------------------------------------------------------
# Utilities
# ----------------------------------------------------------------------------------------


def parameter_count(model: onnx.ModelProto) -> int:
    """Trainable parameters the way torch counts them: floating-point initializers, excluding
    BatchNormalization running statistics (inputs 3 and 4), which torch keeps as buffers, and
    0-d constants such as Clip bounds."""
    stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization"
             for i in (3, 4) if i < len(n.input)}
    floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer
               if t.data_type in floating and t.dims and t.name not in stats)
