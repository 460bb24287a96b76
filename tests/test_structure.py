"""Structural identity (graphopt.verify.structure): equal digests only where the outputs
are provably computed the same way; the verifier then skips running the models."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.verify.structure import computation_digest

RNG = np.random.default_rng(0)


def _model(w=None, dead=False, dup=False, name_mid="h", extra_init=False, alpha=0.1):
    w = RNG.standard_normal((4, 4)).astype(np.float32) if w is None else w
    inits = [numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], [name_mid]),
             helper.make_node("LeakyRelu", [name_mid], ["a"], alpha=alpha)]
    if dup:  # a second copy of the same weight, read by the second MatMul
        inits.append(numpy_helper.from_array(w, "w_copy"))
        nodes.append(helper.make_node("MatMul", ["a", "w_copy"], ["y"]))
    else:
        nodes.append(helper.make_node("MatMul", ["a", "w"], ["y"]))
    if dead:
        nodes.append(helper.make_node("Relu", ["a"], ["unused"]))
    if extra_init:
        inits.append(numpy_helper.from_array(np.ones(3, np.float32), "spare"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_equal_only_when_the_computation_is_the_same():
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    base = computation_digest(_model(w))
    assert base is not None
    # dead nodes, unused initializers, intermediate names, duplicate constant copies: same
    assert computation_digest(_model(w, dead=True)) == base
    assert computation_digest(_model(w, extra_init=True)) == base
    assert computation_digest(_model(w, name_mid="renamed")) == base
    assert computation_digest(_model(w, dup=True)) == base
    # a different weight value, attribute, or interface: different
    w2 = w.copy()
    w2[0, 0] += 1e-6
    assert computation_digest(_model(w2)) != base
    assert computation_digest(_model(w, alpha=0.2)) != base
    renamed_out = _model(w)
    renamed_out.graph.node[-1].output[0] = "z"
    renamed_out.graph.output[0].name = "z"
    assert computation_digest(renamed_out) != base


def test_models_with_subgraphs_get_no_digest():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    els = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                            [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert computation_digest(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])) is None


def test_verifier_skips_runs_for_structural_passes_but_not_for_others():
    m = _model(dead=True, dup=True)
    out, report = graphopt.optimize(m, "dce,cse,prune-initializers", return_report=True)
    by = {r.name: r.extra["verify"] for r in report.records if r.changed}
    assert set(by) >= {"dce", "cse"}
    for name, v in by.items():
        assert v["status"] == "ok" and v["model_runs"] == 0 and "structural" in v["summary"], (name, v)
    # a pass that changes the computation is run, not waved through
    from graphopt.testing import archs  # noqa: F401  (imports the built-in passes too)
    bn = onnx.load(str(__import__("conftest").MODELS / "digits_cnn.onnx"))
    _, report = graphopt.optimize(bn, "fold-bn", return_report=True)
    v = report.records[0].extra["verify"]
    assert v["status"] == "ok" and v["model_runs"] > 0


def test_shape_only_digest_is_a_necessary_condition():
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    w2 = w + 1
    a, b = _model(w), _model(w2)
    assert computation_digest(a, content=False) == computation_digest(b, content=False)
    assert computation_digest(a) != computation_digest(b)
    assert computation_digest(_model(w, alpha=0.3), content=False) != computation_digest(a, content=False)
