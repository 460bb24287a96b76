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

The layers and blocks (GraphBuilder, conv/BN/activation, inverted residual, bottleneck...)
are in graphopt.testing.layers. BatchNorm statistics are random but sane (running variance in [0.5, 1.5]) and the last BN of
every residual branch has a small scale, so activations stay in a moderate range for random
inputs instead of growing with depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .layers import (Dim, GraphBuilder, image_input, logits_output, activation, batchnorm, bn_act_conv,
                     bottleneck, classifier_head, conv_bn_act, inverted_residual, layer_norm, linear, linear3d,
                     make_divisible)

__all__ = [
    "GraphBuilder",
    "bert",
    "densenet_like",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "parameter_count",
    "resnet50",
]

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
    return b.model([image_input(batch, in_channels, image)], [logits_output(batch, num_classes)],
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
    return b.model([image_input(batch, 3, image)], [logits_output(batch, num_classes)],
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
    return b.model([image_input(batch, 3, image)], [logits_output(batch, num_classes)],
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
    return b.model([image_input(batch, 3, image)], [logits_output(batch, num_classes)],
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
