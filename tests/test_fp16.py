"""FP16 conversion (pass `fp16`): real-data accuracy on the digits CNN, IO types kept,
block list respected, out-of-range constants clamped, accuracy-aware blocking."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt import PassContext, PassManager
from graphopt.ir import Model
from graphopt.pipeline import get_pass
from graphopt.passes._lossy import bisect_block, rel_l2
from graphopt.passes.fp16 import to_fp16
from graphopt.runtime import check, session

from conftest import MODELS


def _fp16(proto, samples=None, **opts):
    """Run the pass through a PassManager (no verifier), which resolves its budget."""
    model = Model.from_onnx(proto)
    res = PassManager([get_pass("fp16")(**opts)], PassContext(samples=samples)).run(model).records[0]
    return model.to_onnx(), res


def _io_types(m):
    return [i.type.tensor_type.elem_type for i in list(m.graph.input) + list(m.graph.output)]


def test_digits_fp16_accuracy_on_real_test_set():
    m = onnx.load(str(MODELS / "digits_cnn.onnx"))
    test = np.load(MODELS / "digits_test.npz")
    x, y = test["input"], test["label"]
    q, res = _fp16(m)
    assert res.changed and check(q) is None
    assert _io_types(q) == _io_types(m)
    assert {p.key for p in q.metadata_props} == {p.key for p in m.metadata_props}
    assert sum(t.data_type == TensorProto.FLOAT16 for t in q.graph.initializer) >= 6
    assert not any(t.data_type == TensorProto.FLOAT for t in q.graph.initializer)
    assert sum(t.ByteSize() for t in q.graph.initializer) < 0.6 * sum(t.ByteSize() for t in m.graph.initializer)
    a = session(m, optimize=True).run(None, {"input": x})[0]
    b = session(q, optimize=True).run(None, {"input": x})[0]
    assert b.dtype == np.float32
    assert (b.argmax(1) == y).mean() >= (a.argmax(1) == y).mean() - 0.005
    assert rel_l2(a, b) < 0.01  # the pass's default budget


def _model(nodes, inits, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_block_list_respected_and_constants_clamped():
    big = helper.make_tensor("big", TensorProto.FLOAT, [4], [1e6, 7e4, 1.0, 2.0])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Softmax", ["a"], ["s"], name="sm"),
             helper.make_node("Min", ["s", "big"], ["y"], name="clampmin")]
    m = _model(nodes, [big, w])
    q, res = _fp16(m, block=["Softmax"])
    assert check(q) is None and _io_types(q) == _io_types(m)
    assert res.stats["clamped_values"] == 2
    types = {}
    inferred = onnx.shape_inference.infer_shapes(q)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    sm = next(n for n in q.graph.node if n.op_type == "Softmax")
    assert types[sm.output[0]] == TensorProto.FLOAT  # blocked: stays float32
    mm = next(n for n in q.graph.node if n.op_type == "MatMul")
    assert types[mm.output[0]] == TensorProto.FLOAT16
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    assert rel_l2(session(m).run(None, {"x": x})[0], session(q).run(None, {"x": x})[0]) < 1e-2
    v, n = to_fp16(np.array([1e9, -7e4, 3.0, 1e-30], np.float32))
    assert n == 2 and v[0] == 65504 and v[1] == -65504 and v[3] != 0


def test_accuracy_mode_blocks_the_node_that_overflows():
    # a constant beyond the float16 range: clamping it breaks the output, so the
    # accuracy mode must keep that node (and what its out-of-range result feeds) float32
    big = helper.make_tensor("big", TensorProto.FLOAT, [], [1e6])
    small = helper.make_tensor("small", TensorProto.FLOAT, [], [1e-6])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r0"),
             helper.make_node("Mul", ["r", "big"], ["a"], name="m1"),
             helper.make_node("Mul", ["a", "small"], ["y"], name="m2")]
    m = _model(nodes, [big, small])
    samples = [{"x": np.full((2, 4), 5.0, np.float32)}]
    q0, r0 = _fp16(m, accuracy=False)
    e0 = rel_l2(session(m).run(None, samples[0])[0], session(q0).run(None, samples[0])[0])
    assert e0 > 0.5  # all-fp16 is broken
    q, res = _fp16(m, samples)
    assert "m1" in res.stats["blocked_for_accuracy"] and "r0" not in res.stats["blocked_for_accuracy"]
    e = rel_l2(session(m).run(None, samples[0])[0], session(q).run(None, samples[0])[0])
    assert e <= 0.01


def test_bisect_finds_culprits_in_few_runs():
    names = [f"n{i}" for i in range(64)]
    bad = {"n5", "n40"}
    calls = []

    def err(blocked):
        calls.append(1)
        return 1.0 if bad - set(blocked) else 0.0

    assert bisect_block(names, err, 0.1) == bad
    assert len(calls) < 30  # one run per node would be 64


def test_fp16_reports_measured_latency_ratio():
    m = onnx.load(str(MODELS / "digits_cnn.onnx"))
    res = get_pass("fp16")().run(Model.from_onnx(m), PassContext())
    assert isinstance(res.stats["latency_ratio"], float) and res.stats["latency_ratio"] > 0
    res = get_pass("fp16")(measure=False).run(Model.from_onnx(m), PassContext())
    assert "latency_ratio" not in res.stats


def test_fp16_and_quant_share_lossy_never_each_other():
    """What lossy passes share lives in passes/_lossy: fp16 and quant's modules do not
    import one another (at module level or inside functions)."""
    import ast
    from pathlib import Path

    import graphopt.passes as pkg

    def imports(name):
        tree = ast.parse((Path(pkg.__path__[0]) / f"{name}.py").read_text())
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                out.add((node.module or "").split(".")[-1])
                out.update(a.name for a in node.names if node.level and not node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name.split(".")[-1] for a in node.names)
        return out

    quant = {"quantize", "_qbuild", "_qregions", "_qunfuse"}
    assert "_lossy" in imports("fp16") and not imports("fp16") & quant
    for name in quant:
        assert "fp16" not in imports(name), name


def test_subgraph_reading_a_converted_tensor_reads_a_float32_cast():
    """An If branch (kept float32) reading an outer tensor that a converted node makes reads a
    float32 Cast of it. (The Cast used to be cleaned away, the model failed onnx.checker and
    fp16 left it unchanged.)"""
    rng = np.random.default_rng(0)

    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["h"], [name + "_y"])], name, [],
                                 [helper.make_tensor_value_info(name + "_y", TensorProto.FLOAT, [2, 4])])

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then", "Relu"),
                              else_branch=branch("else", "Sigmoid")),
             helper.make_node("Add", ["y", "h"], ["out"], name="add")]
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.5, (4, 4)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q, res = _fp16(m, measure=False)
    assert res.changed and check(q) is None, res.stats
    casts = {n.output[0] for n in q.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT}
    if_node = next(n for n in q.graph.node if n.op_type == "If")
    reads = [i for a in if_node.attribute for n in a.g.node for i in n.input]
    assert reads and all(r in casts for r in reads)
    x = rng.normal(0, 1, (2, 4)).astype(np.float32)
    for feed in (np.abs(x), -np.abs(x)):  # both branches
        a, b = session(m).run(None, {"x": feed})[0], session(q).run(None, {"x": feed})[0]
        assert rel_l2(a, b) < 1e-2
