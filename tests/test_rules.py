"""The declared fusion rules (passes/fusion/rule.py): every rule refuses a candidate with
its reason, the stats count fired and refused candidates, and fuse-attention fuses the
shipped tiny transformer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from conftest import MODELS, check_equiv
from test_attention import attention_block, block_feeds
from test_fusion import (W, _post_ln_block, gelu_model, hardswish_model, layernorm_model, make,
                         relu6_hardswish_model, vi)

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def stats_of(model, spec, **ctx):
    _, report = graphopt.optimize(model, spec, verify=False, return_report=True, **ctx)
    return [r for r in report.records if r.spec == spec][-1].stats


def conv():
    return W("w", RNG.standard_normal((3, 2, 1, 1)))


def bn_fed_by_input():
    inits = [conv()] + [W(n, RNG.uniform(0.5, 1.5, 3)) for n in ("b", "mean", "var")]
    return make([helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("BatchNormalization", ["c", "scale", "b", "mean", "var"], ["y"])],
                [vi("x", [1, 2, 4, 4]), vi("scale", [3])], [vi("y", None)], inits)


def conv_mul_spatial():
    return make([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "k"], ["y"])],
                [vi("x", [1, 2, 4, 4])], [vi("y", None)], [conv(), W("k", RNG.standard_normal((1, 1, 4, 4)))])


def matmul_3d():
    return make([helper.make_node("MatMul", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])],
                [vi("x", [2, 3, 5])], [vi("y", None)], [W("w", RNG.standard_normal((5, 6))), W("b", np.ones(6))])


def pad_of_one():
    return make([helper.make_node("Pad", ["x", "pads", "one"], ["p"]), helper.make_node("Conv", ["p", "w"], ["y"])],
                [vi("x", [1, 2, 4, 4])], [vi("y", None)],
                [W("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), W("one", np.array(1.0)), conv()])


def disjoint_clips():
    k = [W(n, np.array(v)) for n, v in (("a", 0.0), ("b", 1.0), ("c", 2.0), ("d", 3.0))]
    return make([helper.make_node("Clip", ["x", "a", "b"], ["h"]), helper.make_node("Clip", ["h", "c", "d"], ["y"])],
                [vi("x", [2, 8])], [vi("y", None)], k)


def add_tanh_gelu():
    return make([helper.make_node("Add", ["x", "b"], ["h"]), helper.make_node("Gelu", ["h"], ["y"], approximate="tanh")],
                [vi("x", [2, 5, 8])], [vi("y", None)], [W("b", RNG.standard_normal(8))], opset=20)


def gemm_clip():
    return make([helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("Clip", ["g", "lo", "hi"], ["y"])],
                [vi("x", [2, 4])], [vi("y", None)],
                [W("w", RNG.standard_normal((4, 3))), W("b", np.zeros(3)), W("lo", np.array(0.0)), W("hi", np.array(6.0))])


def conv_relu_fp16():
    h = TensorProto.FLOAT16
    return make([helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                [helper.make_tensor_value_info("x", h, [1, 2, 4, 4])], [helper.make_tensor_value_info("y", h, None)],
                [numpy_helper.from_array(RNG.standard_normal((3, 2, 1, 1)).astype(np.float16), "w"),
                 numpy_helper.from_array(np.zeros(3, np.float16), "b")])


def transpose_without_perm():
    return make([helper.make_node("Transpose", ["x"], ["t"]), helper.make_node("Transpose", ["t"], ["y"], perm=[1, 0, 2])],
                [vi("x", [2, 3, 4])], [vi("y", None)])


def reshape_by_input():
    return make([helper.make_node("Reshape", ["x", "s1"], ["r"]), helper.make_node("Reshape", ["r", "s2"], ["y"])],
                [vi("x", [2, 6]), helper.make_tensor_value_info("s2", TensorProto.INT64, [2])], [vi("y", None)],
                [W("s1", np.array([3, 4], np.int64))])


def squeeze_other_axis():
    return make([helper.make_node("Unsqueeze", ["x", "a0"], ["u"]), helper.make_node("Squeeze", ["u", "a1"], ["y"])],
                [vi("x", [1, 3])], [vi("y", None)], [W("a0", np.array([0], np.int64)), W("a1", np.array([1], np.int64))])


def broadcast_mask_block():
    m = attention_block()
    mask = next(i for i in m.graph.input if i.name == "mask")
    mask.type.tensor_type.shape.dim[0].dim_value = 1  # [1, seq]: broadcast over the batch
    return m


ORT = {"target": "ort"}
CASES = {  # id: (model, pass, context, the reason it refuses with)
    "fold-bn": (bn_fed_by_input, "fold-bn", {}, "BatchNormalization parameters not constant (or training mode)"),
    "fold-affine": (conv_mul_spatial, "fold-affine", {}, "constant not per output channel"),
    "fuse-gemm": (matmul_3d, "fuse-gemm", {}, "input not 2-D (Gemm is 2-D only)"),
    "fold-pad": (pad_of_one, "fold-pad", {}, "Pad is not a constant zero padding"),
    "fuse-hardswish": (lambda: hardswish_model(alpha=0.2), "fuse-hardswish", {}, "HardSigmoid alpha/beta are not 1/6, 0.5"),
    "fuse-hardswish-opset": (lambda: hardswish_model(opset=13), "fuse-hardswish", {}, "needs opset >= 14"),
    "fuse-hardswish-clip": (lambda: relu6_hardswish_model(three=2.0), "fuse-hardswish", {},
                            "not x * Clip(x + 3, 0, 6) / 6"),
    "fuse-hardswish-clip-shared": (lambda: relu6_hardswish_model("div_on_clip", share=True), "fuse-hardswish", {},
                                   "an intermediate of x * Clip(x + 3, 0, 6) / 6 is read elsewhere"),
    "fuse-hardswish-clip-opset": (lambda: relu6_hardswish_model(opset=11), "fuse-hardswish", {}, "needs opset >= 14"),
    "fuse-gelu": (lambda: gelu_model("a", c=2.0), "fuse-gelu", {}, "Erf input is not x / sqrt(2)"),
    "fuse-gelu-opset": (lambda: gelu_model("a", opset=17), "fuse-gelu", {}, "needs opset >= 20"),
    "fuse-clip": (disjoint_clips, "fuse-clip", {}, "the ranges do not overlap"),
    "fuse-layernorm": (lambda: layernorm_model(axes2=(-2,)), "fuse-layernorm", {}, "mean and variance reduce different axes"),
    "fuse-layernorm-opset": (lambda: layernorm_model(opset=16), "fuse-layernorm", {}, "needs opset >= 17"),
    "fuse-bias-gelu": (add_tanh_gelu, "fuse-bias-gelu", ORT, "tanh-approximate Gelu"),
    "fuse-skip-layernorm": (lambda: _post_ln_block(skip_shape=(1, 5, 8)), "fuse-skip-layernorm", ORT,
                            "addends not provably the same [batch, seq, hidden] shape"),
    "fuse-attention-scale": (lambda: attention_block(scale=1 / 3), "fuse-attention", ORT,
                             "scores not scaled by 1/sqrt(head size)"),
    "fuse-attention-mask": (broadcast_mask_block, "fuse-attention", ORT, "mask shape not provably [batch, seq]"),
    "fuse-attention-axis": (lambda: attention_block(axis=2), "fuse-attention", ORT, "Softmax not over the last axis"),
    "fuse-ort-activation": (gemm_clip, "fuse-ort-activation", ORT,
                            "FusedGemm has no Clip bounds attributes we trust across versions"),
    "fuse-ort-activation-fp16": (conv_relu_fp16, "fuse-ort-activation", ORT,
                                 "not float32 (the contrib kernels are float32 only)"),
    "merge-transpose": (transpose_without_perm, "merge-transpose", {}, "perm not given"),
    "merge-reshape": (reshape_by_input, "merge-reshape", {}, "shape not constant"),
    "merge-reshape-squeeze": (squeeze_other_axis, "merge-reshape", {}, "axes not constant, negative or different"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rule_refuses_with_reason(case):
    build, spec, ctx, reason = CASES[case]
    m = build()
    out, report = graphopt.optimize(m, spec, verify=False, return_report=True, **ctx)
    st = [r for r in report.records if r.spec == spec][-1].stats
    assert st["refused"] == 1 and st["reasons"] == {reason: 1}, st
    assert next(iter(st.values())) == 0 and [n.op_type for n in out.graph.node] == [n.op_type for n in m.graph.node]


def test_every_rule_has_a_refusal_case():
    from graphopt.passes.fusion import Rule
    from graphopt.pipeline import get_pass

    rules = {name for name in graphopt.list_passes() if issubclass(get_pass(name), Rule)}
    assert rules == {spec for _, spec, _, _ in CASES.values()}


def test_stats_count_fired_and_refused_candidates():
    # two Clip chains: one merges, one is disjoint; a lone Relu is no candidate at all
    k = [W(n, np.array(v)) for n, v in (("a", 0.0), ("b", 1.0), ("c", 2.0), ("d", 3.0))]
    m = make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Clip", ["r", "a", "b"], ["y1"]),
              helper.make_node("Clip", ["x", "a", "b"], ["h"]), helper.make_node("Clip", ["h", "c", "d"], ["y2"]),
              helper.make_node("Relu", ["x"], ["y3"])],
             [vi("x", [2, 8])], [vi("y1", None), vi("y2", None), vi("y3", None)], k)
    assert stats_of(m, "fuse-clip") == {"merged": 1, "refused": 1, "reasons": {"the ranges do not overlap": 1}}
    # a rule that does not emit for the target leaves the model alone without counting
    assert stats_of(attention_block(scale=1 / 3), "fuse-attention", target="onnx") == {"fused": 0}


def test_fuse_attention_on_tiny_transformer():
    """onnxruntime's transformers optimizer fuses the tiny transformer's attention; so do we.
    Its context Reshape is spelled Concat(Shape(x)[0], Shape(x)[1], Shape(x)[2]) with x's
    hidden size static: that resolves to [batch, seq, 64]."""
    m = onnx.load(MODELS / "tiny_transformer.onnx")
    vocab = next(t for t in m.graph.initializer if t.name == "tok.weight").dims[0]
    out, report = graphopt.optimize(m, "clean,fuse", target="ort", return_report=True)  # verified
    att = [n for n in out.graph.node if n.op_type == "Attention"]
    assert len(att) == 2 and all(n.domain == "com.microsoft" for n in att)
    rec = [r for r in report.records if r.spec == "fuse-attention" and r.changed]
    assert rec and rec[0].stats["fused"] == 2 and rec[0].extra["verify"]["status"] == "ok"
    feeds = {"input_ids": RNG.integers(0, vocab, (2, 7)).astype(np.int64)}
    check_equiv(m, out, feeds)


def test_cli_prints_refusals(tmp_path, capsys):
    from graphopt.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(attention_block(scale=1 / 3), src)
    assert main([str(src), "-p", "fuse-attention", "--target", "ort", "-o", str(tmp_path / "o.onnx")]) == 0
    assert "fuse-attention: 0 fused, 1 candidates refused: scores not scaled by 1/sqrt(head size) (1)" \
        in capsys.readouterr().out
    assert main([str(src), "-p", "fuse-attention", "--target", "ort", "-o", str(tmp_path / "o.onnx"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passes"][0]["stats"] == {"fused": 0, "refused": 1,
                                          "reasons": {"scores not scaled by 1/sqrt(head size)": 1}}
