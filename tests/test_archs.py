"""The reference-architecture builders in graphopt.testing.archs."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.testing import archs

SMALL_CNNS = {
    "resnet50": lambda **kw: archs.resnet50(image=32, width=0.125, blocks=(1, 1, 1, 1), **kw),
    "resnet50_deeper": lambda **kw: archs.resnet50(image=64, width=0.0625, blocks=(2, 1, 2, 1),
                                                   **kw),
    "mobilenet_v2": lambda **kw: archs.mobilenet_v2(image=32, width=0.25, max_repeats=2, **kw),
    "mobilenet_v3_small": lambda **kw: archs.mobilenet_v3_small(image=32, width=0.25, **kw),
    "mobilenet_v3_small_op": lambda **kw: archs.mobilenet_v3_small(image=32, width=0.25,
                                                                   hardswish="op", **kw),
    "densenet_like": lambda **kw: archs.densenet_like(image=16, blocks=(2, 3), **kw),
}
TINY_BERT = dict(layers=2, hidden=64, heads=4, intermediate=128, vocab=100)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def inferred_output_shape(model: onnx.ModelProto, index: int = 0) -> list:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = inferred.graph.output[index].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


@pytest.mark.parametrize("name", SMALL_CNNS)
def test_small_cnn_is_valid_and_runs(name):
    model = SMALL_CNNS[name](batch="N")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    assert inferred_output_shape(model) == ["N", classes]

    image = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    x = np.random.default_rng(1).standard_normal((2, 3, image, image), dtype=np.float32)
    (logits,) = run(model, {"input": x})
    assert logits.shape == (2, classes)
    assert np.isfinite(logits).all()
    assert np.abs(logits).max() > 1e-4
    assert np.abs(logits).max() < 1e4
    assert not np.allclose(logits[0], logits[1])  # depends on the input

    ops = op_counts(model)
    assert ops["BatchNormalization"] > 0
    assert "LayerNormalization" not in ops


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "mobilenet_v3_small"])
def test_bn_not_folded_into_conv(name):
    model = SMALL_CNNS[name]()
    producers = {o: n for n in model.graph.node for o in n.output}
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns and all(producers[bn.input[0]].op_type == "Conv" for bn in bns)
    consumers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n.op_type)
    # every bias-free Conv feeds exactly one BatchNormalization (biased ones: squeeze-excite)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 2]
    assert len(convs) == len(bns)
    assert all(consumers[n.output[0]] == ["BatchNormalization"] for n in convs)


def test_builders_are_deterministic():
    a, b = SMALL_CNNS["mobilenet_v2"](), SMALL_CNNS["mobilenet_v2"]()
    assert a.SerializeToString() == b.SerializeToString()
    c = SMALL_CNNS["mobilenet_v2"](seed=1)
    assert [n.op_type for n in c.graph.node] == [n.op_type for n in a.graph.node]
    assert c.graph.initializer[0].raw_data != a.graph.initializer[0].raw_data


def test_resnet50_full_size_parameters_and_shape():
    model = archs.resnet50()
    params = archs.parameter_count(model)
    assert abs(params - 25_557_032) / 25_557_032 < 0.01
    assert params == 25_557_032  # torchvision's exact count
    onnx.checker.check_model(model)
    assert inferred_output_shape(model) == [1, 1000]
    ops = op_counts(model)
    assert ops["Conv"] == ops["BatchNormalization"] == 53
    assert ops["Add"] == 16 and ops["MaxPool"] == 1 and ops["Gemm"] == 1


def test_resnet50_blocks_and_stride():
    ops = op_counts(archs.resnet50(image=32, width=0.125, blocks=(1, 2, 1, 1)))
    assert ops["Add"] == 5
    assert ops["Conv"] == 3 * 5 + 4 + 1  # three per bottleneck, one projection per stage, stem


def test_mobilenets_full_size_parameters():
    assert archs.parameter_count(archs.mobilenet_v2()) == 3_504_872
    assert archs.parameter_count(archs.mobilenet_v3_small()) == 2_542_856


def test_mobilenet_v2_structure():
    model = SMALL_CNNS["mobilenet_v2"]()
    inits = {t.name: t for t in model.graph.initializer}
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and onnx.helper.get_attribute_value(
                     next(a for a in n.attribute if a.name == "group")) > 1]
    assert depthwise
    for n in depthwise:
        group = next(a.i for a in n.attribute if a.name == "group")
        assert inits[n.input[1]].dims[0] == group and inits[n.input[1]].dims[1] == 1
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips and all(len(n.input) == 3 for n in clips)
    bounds = {float(onnx.numpy_helper.to_array(inits[n.input[i]])) for n in clips for i in (1, 2)}
    assert bounds == {0.0, 6.0}
    assert op_counts(model)["Add"] > 0


def test_mobilenet_v3_hardswish_spellings():
    mul = op_counts(SMALL_CNNS["mobilenet_v3_small"]())
    op = op_counts(SMALL_CNNS["mobilenet_v3_small_op"]())
    assert "HardSwish" not in mul and mul["HardSigmoid"] > op["HardSigmoid"]
    assert op["HardSwish"] > 0
    # squeeze-excite: pooled, two biased 1x1 convs, HardSigmoid gate, Mul
    assert op["GlobalAveragePool"] == 1 + 9
    assert op["HardSigmoid"] == 9
    with pytest.raises(ValueError):
        archs.mobilenet_v3_small(opset=13, hardswish="op")


def test_densenet_concats_all_previous_features():
    model = archs.densenet_like(image=16, blocks=(2, 3), growth=4)
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    # per block: one Concat per layer after the first, plus the block output
    assert sorted(len(n.input) for n in concats) == [2, 2, 3, 3, 4]
    assert op_counts(model)["AveragePool"] == 1


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_tiny_bert_runs_and_masks(opset):
    model = archs.bert(**TINY_BERT, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert inferred_output_shape(model, 0) == ["batch", "seq", 64]
    assert inferred_output_shape(model, 1) == ["batch", 64]

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, 5:] = 0
    hidden, pooled = run(model, {"input_ids": ids, "attention_mask": mask})
    assert hidden.shape == (2, 7, 64) and pooled.shape == (2, 64)
    assert np.isfinite(hidden).all() and np.isfinite(pooled).all()
    # LayerNorm output: roughly zero mean, unit variance per token
    assert abs(float(hidden.mean())) < 0.2 and 0.5 < float(hidden.std()) < 2.0

    # tokens hidden by the mask must not influence the visible ones
    ids2 = ids.copy()
    ids2[1, 5:] = (ids2[1, 5:] + 1) % 100
    hidden2, _ = run(model, {"input_ids": ids2, "attention_mask": mask})
    np.testing.assert_allclose(hidden2[1, :5], hidden[1, :5], rtol=1e-4, atol=1e-4)
    assert not np.allclose(hidden2[1, 5:], hidden[1, 5:])

    # other sequence lengths work (symbolic dims)
    (h3, _) = run(model, {"input_ids": ids[:1, :3], "attention_mask": mask[:1, :3]})
    assert h3.shape == (1, 3, 64)


def test_bert_exporter_patterns():
    ops = op_counts(archs.bert(**TINY_BERT))
    assert "LayerNormalization" not in ops and "Gelu" not in ops
    assert ops["Erf"] == 2 and ops["Softmax"] == 2
    assert ops["Pow"] == ops["Sqrt"] == 2 * 2 + 1  # two LayerNorms per layer + embeddings
    assert ops["ReduceMean"] == 2 * ops["Pow"]
    assert ops["Constant"] > 0  # small constants are Constant nodes, as torch exports them


@pytest.mark.slow
def test_bert_base_size():
    model = archs.bert()
    assert archs.parameter_count(model) == 109_482_240  # bert-base-uncased incl. pooler
    assert 1000 <= len(model.graph.node) <= 1500
    size = sum(t.ByteSize() for t in model.graph.initializer)
    assert 420e6 <= size <= 440e6
