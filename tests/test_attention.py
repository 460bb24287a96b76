"""fuse-attention (--target ort): BERT-style multi-head self-attention -> com.microsoft Attention.

The rewrite fires on archs.bert's layers and on a hand-built block (constant Reshape
targets), keeps the model equivalent in onnxruntime, and refuses its near-misses."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from conftest import check_equiv

archs = pytest.importorskip("graphopt.testing.archs")

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def W(name, arr):
    arr = np.asarray(arr)
    return numpy_helper.from_array(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, name)


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def opt(model, spec, **ctx):
    return graphopt.optimize(model, spec, verify=False, **ctx)


def ops(model):
    return [n.op_type for n in model.graph.node]


def attention_nodes(model):
    return [n for n in model.graph.node if n.op_type == "Attention"]


def token_feeds(batch=2, seq=8, vocab=100):
    mask = (RNG.random((batch, seq)) > 0.3).astype(np.int64)
    mask[:, 0] = 1  # at least one visible token per row
    return {"input_ids": RNG.integers(0, vocab, (batch, seq)), "attention_mask": mask}


def small_bert(**kw):
    return archs.bert(**{"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128, "vocab": 100,
                         "max_position": 16, **kw})


# -- on archs.bert -------------------------------------------------------------------------


def test_fuse_attention_bert():
    m = small_bert()
    out = graphopt.optimize(m, "clean,fuse", target="ort")  # verification instrument on
    assert ops(out).count("Attention") == 2 and "Softmax" not in ops(out)
    att = attention_nodes(out)
    assert all(n.domain == "com.microsoft" for n in att)
    assert {n.output[0] for n in att} == {f"/encoder.layer.{i}.attention.self.ctx/Reshape_output_0" for i in (0, 1)}
    # an int64 mask may hold other values than 0/1: (1 - mask) * -10000 stays, as attention_bias
    assert [list(n.input[3:]) for n in att] == [["", "", att[0].input[5]]] * 2  # one bias for all layers
    assert ops(out).count("Expand") == 2  # the embeddings' token types, the mask rows
    before = opt(m, "clean,fuse", target="onnx")
    assert len(out.graph.node) < len(before.graph.node) // 2
    check_equiv(m, out, token_feeds())
    check_equiv(m, out, token_feeds(batch=1, seq=5))
    feeds = token_feeds()
    feeds["attention_mask"] = RNG.integers(0, 8, feeds["attention_mask"].shape)  # as the verifier draws it
    check_equiv(m, out, feeds)


def test_fuse_attention_bert_extra_input():
    """Another int input ahead of the others (like HF's token_type_ids) changes the verifier's
    draws; still verified, as the rewrite is exact for every mask value."""
    m = small_bert(layers=1)
    m.graph.input.insert(0, vi("token_type_ids", ["batch", "seq"], TensorProto.INT64))
    out = graphopt.optimize(m, "clean,fuse", target="ort")
    assert ops(out).count("Attention") == 1


@pytest.mark.parametrize("mask_value", [-10000.0, float(np.finfo(np.float32).min)])
def test_fuse_attention_bert_zero_one_mask(mask_value):
    """A mask declared 0/1 (--input-range attention_mask=0:1) becomes mask_index; HF's newer
    exports mask with finfo(float32).min, passed on as mask_filter_value."""
    m = small_bert(mask_value=mask_value)
    out = graphopt.optimize(m, "clean,fuse", target="ort", input_ranges={"attention_mask": (0, 1)})
    att = attention_nodes(out)
    assert len(att) == 2 and all(len(n.input) == 4 for n in att)
    assert att[0].input[3] == att[1].input[3]  # one int32 mask for all layers
    assert ops(out).count("Cast") == 1 and "Sub" not in ops(out)  # the float mask chain is gone
    attrs = {a.name: helper.get_attribute_value(a) for a in att[0].attribute}
    assert attrs["num_heads"] == 4 and attrs.get("mask_filter_value", -10000.0) == pytest.approx(mask_value)
    check_equiv(m, out, token_feeds())


def test_fuse_attention_default_target_does_nothing():
    m = small_bert()
    for ctx in ({}, {"target": "onnx"}):
        out = opt(m, "clean,fuse", **ctx)
        assert "Attention" not in ops(out) and ops(out).count("Softmax") == 2
    assert ops(opt(m, "fuse-attention")) == ops(m)


def test_fuse_attention_bert_observed_probs():
    """A layer whose attention probabilities are a graph output keeps its subgraph."""
    m = small_bert()
    probs = "/encoder.layer.0.attention.self/Softmax_output_0"
    assert probs in {o for n in m.graph.node for o in n.output}
    m.graph.output.append(vi(probs, ["batch", 4, "seq", "seq"]))
    out = graphopt.optimize(m, "clean,fuse", target="ort")
    assert ops(out).count("Attention") == 1 and ops(out).count("Softmax") == 1
    check_equiv(m, out, token_feeds())


# -- a hand-built block (constant Reshape targets) -------------------------------------------------


def attention_block(heads=2, dh=8, scale=None, scale_at="scores", axis=-1, mask=True, weight_input=False,
                    expose=None, mask_dtype=TensorProto.INT64):
    """x [2, 5, heads*dh] -> BERT self-attention -> y; `scale` defaults to 1/sqrt(dh)."""
    d = heads * dh
    scale = 1 / math.sqrt(dh) if scale is None else scale
    nodes = []
    inits = [W("shape4", np.array([0, 0, heads, dh], np.int64)), W("shape3", np.array([0, 0, d], np.int64))]
    inputs = [vi("x", [2, 5, d])]
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        if weight_input and n == "q":
            inputs.append(vi("w_q", [d, d]))
        else:
            inits.append(W(f"w_{n}", RNG.standard_normal((d, d)) / math.sqrt(d)))
        inits.append(W(f"b_{n}", RNG.standard_normal(d) * 0.1))
        nodes += [helper.make_node("MatMul", ["x", f"w_{n}"], [f"{n}_mm"]),
                  helper.make_node("Add", [f"{n}_mm", f"b_{n}"], [f"{n}_b"]),
                  helper.make_node("Reshape", [f"{n}_b", "shape4"], [f"{n}_r"]),
                  helper.make_node("Transpose", [f"{n}_r"], [f"{n}_t"], perm=perm)]
    q, k = "q_t", "k_t"
    if scale_at == "qk":  # Q and K each scaled by sqrt(scale) before the product
        inits.append(W("qk_scale", np.array(math.sqrt(scale), np.float32)))
        nodes += [helper.make_node("Mul", ["q_t", "qk_scale"], ["q_s"]),
                  helper.make_node("Mul", ["qk_scale", "k_t"], ["k_s"])]
        q, k = "q_s", "k_s"
    nodes.append(helper.make_node("MatMul", [q, k], ["scores"]))
    s = "scores"
    if scale_at == "scores":
        inits.append(W("div", np.array(1 / scale, np.float32)))
        nodes.append(helper.make_node("Div", ["scores", "div"], ["scaled"]))
        s = "scaled"
    if mask:
        inputs.append(vi("mask", [2, 5], mask_dtype))
        inits += [W("axes12", np.array([1, 2], np.int64)), W("one", np.array(1.0, np.float32)),
                  W("big", np.array(-10000.0, np.float32))]
        nodes += [helper.make_node("Unsqueeze", ["mask", "axes12"], ["m4"]),
                  helper.make_node("Cast", ["m4"], ["mf"], to=F),
                  helper.make_node("Sub", ["one", "mf"], ["inv"]),
                  helper.make_node("Mul", ["inv", "big"], ["madd"]),
                  helper.make_node("Add", [s, "madd"], ["masked"])]
        s = "masked"
    nodes += [helper.make_node("Softmax", [s], ["probs"], axis=axis),
              helper.make_node("MatMul", ["probs", "v_t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "shape3"], ["y"])]
    outputs = [vi("y", [2, 5, d])] + ([vi(expose, [2, heads, 5, 5])] if expose else [])
    m = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def block_feeds(model):
    feeds = {"x": RNG.standard_normal((2, 5, 16)).astype(np.float32)}
    for i in model.graph.input:
        if i.name == "mask":
            m = RNG.random((2, 5)) > 0.4
            m[:, 0] = True
            feeds["mask"] = m.astype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        elif i.name == "w_q":
            feeds["w_q"] = (RNG.standard_normal((16, 16)) / 4).astype(np.float32)
    return feeds


@pytest.mark.parametrize("scale_at,mask,mask_dtype", [
    ("scores", True, TensorProto.INT64), ("qk", True, TensorProto.INT64), ("scores", False, None),
    ("scores", True, TensorProto.INT32), ("scores", True, TensorProto.BOOL)])
def test_fuse_attention_block(scale_at, mask, mask_dtype):
    m = attention_block(scale_at=scale_at, mask=mask, mask_dtype=mask_dtype)
    out = graphopt.optimize(m, "fuse-attention", target="ort")  # verified (float contract)
    if not mask:
        assert ops(out) == ["Attention"]
    elif mask_dtype == TensorProto.BOOL:  # certainly 0/1: mask_index
        assert ops(out) == ["Cast", "Attention"]
    else:  # the float mask, expanded to [B, 1, S, S], as attention_bias
        assert sorted(ops(out)) == ["Attention", "Cast", "Expand", "Mul", "Shape", "Sub", "Transpose", "Unsqueeze"]
    att = attention_nodes(out)[0]
    assert att.output[0] == "y"
    assert len(att.input) == (3 if not mask else 4 if mask_dtype == TensorProto.BOOL else 6)
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert weights[att.input[1]].shape == (16, 48) and weights[att.input[2]].shape == (48,)
    check_equiv(m, out, block_feeds(m))


@pytest.mark.parametrize("case", ["weight_input", "probs_output", "scores_output", "wrong_scale", "qk_wrong_scale",
                                  "softmax_axis", "float_mask"])
def test_fuse_attention_refusals(case):
    kw = {"weight_input": {"weight_input": True}, "probs_output": {"expose": "probs"},
          "scores_output": {"expose": "scores"}, "wrong_scale": {"scale": 1 / 3},
          "qk_wrong_scale": {"scale_at": "qk", "scale": 0.5}, "softmax_axis": {"axis": 2},
          "float_mask": {"mask_dtype": F}}[case]
    m = attention_block(**kw)
    assert ops(opt(m, "fuse-attention", target="ort")) == ops(m)
    if case == "wrong_scale":  # the same block with the right scale does fuse
        assert ops(opt(attention_block(), "fuse-attention", target="ort"))[-1] == "Attention"
