"""Tests of the cleanup passes (group `clean`): each fires where it should and nowhere else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper as oh, numpy_helper as nh

import graphopt
from conftest import run_ort

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8):
    g = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(m)
    return m


def _vi(name, shape, t=F):
    return oh.make_tensor_value_info(name, t, shape)


def _run(model, spec, feeds):
    opt = graphopt.optimize(model, spec, verify=False)
    onnx.checker.check_model(opt)
    assert [o.name for o in opt.graph.output] == [o.name for o in model.graph.output]
    ref, got = run_ort(model, feeds), run_ort(opt, feeds)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype and r.shape == g.shape
        assert r.tobytes() == g.tobytes()  # exact contract: bit-identical
    return opt


def _ops(m):
    return [n.op_type for n in m.graph.node]


X = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}


def test_dce_removes_dead_but_keeps_subgraph_reads():
    then_g = oh.make_graph([oh.make_node("Identity", ["used_by_branch"], ["t"])], "then", [], [_vi("t", [2, 3])])
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", [2, 3])])
    nodes = [
        oh.make_node("Relu", ["x"], ["dead"]),
        oh.make_node("Abs", ["x"], ["used_by_branch"]),
        oh.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        oh.make_node("Greater", ["s", "zero"], ["c"]),
        oh.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [nh.from_array(np.float32(0), "zero")])
    opt = _run(m, "dce", X)
    assert "Relu" not in _ops(opt) and "Abs" in _ops(opt)


def test_prune_initializers_drops_initializer_inputs_and_sets_ir4():
    w = nh.from_array(np.ones((2, 3), np.float32), "w")
    unused = nh.from_array(np.ones((5,), np.float32), "unused")
    m = _model([oh.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [2, 3]), _vi("w", [2, 3]), _vi("unused", [5])],
               [_vi("y", [2, 3])], [w, unused], opset=9, ir=3)
    opt = _run(m, "prune-initializers", X)
    assert [i.name for i in opt.graph.input] == ["x"]
    assert opt.ir_version >= 4
    assert [t.name for t in opt.graph.initializer] == ["w"]


def test_noop_identity_dropout_cast_transpose_mul1():
    one = nh.from_array(np.ones((1,), np.float32), "one")
    nodes = [
        oh.make_node("Identity", ["x"], ["a"]),
        oh.make_node("Dropout", ["a"], ["b"]),
        oh.make_node("Cast", ["b"], ["c"], to=F),
        oh.make_node("Transpose", ["c"], ["d"], perm=[0, 1]),
        oh.make_node("Mul", ["d", "one"], ["e"]),
        oh.make_node("Relu", ["e"], ["f"]),
        oh.make_node("Identity", ["f"], ["y"]),  # graph output keeps its name
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [one])
    m = onnx.shape_inference.infer_shapes(m)
    opt = _run(m, "noop", X)
    assert _ops(opt) == ["Relu"]


def test_noop_negative_cases():
    zero = nh.from_array(np.zeros((1,), np.float32), "zero")
    shape = nh.from_array(np.array([3, 2], np.int64), "shape")
    nodes = [
        oh.make_node("Dropout", ["x"], ["d", "mask"]),              # mask used: keep
        oh.make_node("Cast", ["d"], ["c"], to=TensorProto.FLOAT16),  # changes type: keep
        oh.make_node("Cast", ["c"], ["c2"], to=F),
        oh.make_node("Reshape", ["c2", "shape"], ["r"]),             # changes shape: keep
        oh.make_node("Add", ["r", "zero"], ["y"]),                   # x+0 maps -0 to +0: keep
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [3, 2]), _vi("mask", [2, 3], TensorProto.BOOL)],
               [zero, shape], opset=13)
    m = onnx.shape_inference.infer_shapes(m)
    feeds = {"x": np.array([[-0.0, 1, 2], [3, -0.0, 5]], np.float32)}
    opt = _run(m, "noop", feeds)
    assert sorted(_ops(opt)) == sorted(_ops(m))


def test_fold_constants_and_shape():
    a = nh.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "a")
    nodes = [
        oh.make_node("Exp", ["a"], ["ea"]),
        oh.make_node("Shape", ["x"], ["sx"]),
        oh.make_node("Reshape", ["ea", "sx"], ["r"]),
        oh.make_node("Add", ["x", "r"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [a])
    opt = _run(m, "fold-constants", X)
    assert _ops(opt) == ["Add"]


def test_fold_cap_and_random_ops_not_folded():
    shape = nh.from_array(np.array([1024, 1024], np.int64), "shape")
    small = nh.from_array(np.array([2, 3], np.int64), "small")
    nodes = [
        oh.make_node("ConstantOfShape", ["shape"], ["big"]),        # 4 MiB from 16 bytes: keep
        oh.make_node("ReduceMax", ["big"], ["bm"], keepdims=0),
        oh.make_node("RandomNormal", [], ["rn"], shape=[2, 3]),     # random: keep
        oh.make_node("Mul", ["rn", "bm"], ["z"]),
        oh.make_node("Add", ["x", "z"], ["y"]),
        oh.make_node("ConstantOfShape", ["small"], ["y2"]),         # small: folds
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3]), _vi("y2", [2, 3])], [shape, small])
    opt = graphopt.optimize(m, "fold-constants", verify=False)
    onnx.checker.check_model(opt)
    ops = _ops(opt)
    assert "ConstantOfShape" in ops and "RandomNormal" in ops and "Mul" in ops
    assert ops.count("ConstantOfShape") == 1
    assert max(t.ByteSize() for t in opt.graph.initializer) < 1 << 20
    # y2 is now a constant output with the same value
    assert np.array_equal(run_ort(opt, X)[1], np.zeros((2, 3), np.float32))


def test_cse_merges_equal_and_keeps_different_attrs():
    w1 = nh.from_array(np.full((3,), 2.0, np.float32), "w1")
    w2 = nh.from_array(np.full((3,), 2.0, np.float32), "w2")
    nodes = [
        oh.make_node("Mul", ["x", "w1"], ["m1"]),
        oh.make_node("Mul", ["x", "w2"], ["m2"]),            # same after initializer dedup
        oh.make_node("Softmax", ["m1"], ["s1"], axis=0),
        oh.make_node("Softmax", ["m2"], ["s2"], axis=1),     # different attribute: keep
        oh.make_node("Add", ["s1", "s2"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [w1, w2])
    opt = _run(m, "cse", X)
    assert _ops(opt).count("Mul") == 1 and _ops(opt).count("Softmax") == 2
    assert len(opt.graph.initializer) == 1


def test_clean_recurses_into_if_branches():
    then_g = oh.make_graph([oh.make_node("Identity", ["x"], ["t0"]), oh.make_node("Relu", ["t0"], ["t"]),
                            oh.make_node("Neg", ["x"], ["dead"])],
                           "then", [], [_vi("t", [2, 3])])
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", [2, 3])])
    nodes = [
        oh.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        oh.make_node("Greater", ["s", "zero"], ["c"]),
        oh.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [nh.from_array(np.float32(0), "zero")])
    opt = _run(m, "clean", {"x": np.abs(X["x"])})
    branch = [n for n in opt.graph.node if n.op_type == "If"][0].attribute
    then = [a.g for a in branch if a.name == "then_branch"][0]
    assert [n.op_type for n in then.node] == ["Relu"]


def test_noop_slice_reversal_kept_full_slice_removed():
    ints = lambda name, v: nh.from_array(np.array(v, np.int64), name)
    inits = [ints("st", [0]), ints("en", [100]), ints("ax", [1]), ints("rev_st", [-1]),
             ints("rev_en", [-100]), ints("neg1", [-1])]
    nodes = [
        oh.make_node("Slice", ["x", "st", "en", "ax"], ["a"]),                     # takes all
        oh.make_node("Slice", ["a", "rev_st", "rev_en", "ax", "neg1"], ["y"]),      # reverses
    ]
    m = onnx.shape_inference.infer_shapes(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], inits))
    opt = _run(m, "noop", X)
    assert _ops(opt) == ["Slice"]
    assert list(opt.graph.node[0].input)[4] == "neg1"


def test_cse_merges_initializers_without_loading_weights():
    """Duplicate detection reads an ONNX initializer's bytes without turning it into a
    numpy array (which would make export copy it again); equal samples but different
    bytes are not merged."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from graphopt.ir import Model

    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    c = a.copy()
    c[1, 1] += 1.0  # not on the ~64-element sample grid: samples collide, bytes differ
    inits = [nh.from_array(a, "a"), nh.from_array(a.copy(), "b"), nh.from_array(c, "c")]
    nodes = [oh.make_node("MatMul", ["x", n], [f"y{n}"]) for n in "abc"]
    nodes += [oh.make_node("Sum", ["ya", "yb", "yc"], ["y"])]
    m = _model(nodes, [_vi("x", [2, 64])], [_vi("y", [2, 64])], inits)
    model = Model.from_onnx(m)
    stats = graphopt.PassManager("cse").run(model).records[0].stats
    assert stats["initializers_merged"] == 1
    consts = {t.name: t for t in model.graph.tensors().values() if isinstance(t, gs.Constant)}
    assert all(isinstance(t._values, LazyValues) for t in consts.values())
    opt = model.to_onnx()
    assert sorted(t.name for t in opt.graph.initializer) == ["a", "c"]
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    assert run_ort(m, feeds)[0].tobytes() == run_ort(opt, feeds)[0].tobytes()


def test_toposort_keeps_sorted_order_and_fixes_unsorted():
    import onnx_graphsurgeon as gs

    from graphopt.errors import GraphoptError
    from graphopt.ir import Model, sort_nodes

    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Neg", ["x"], ["b"]),
             oh.make_node("Add", ["a", "b"], ["y"])]
    model = Model.from_onnx(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])]))
    g = model.graph
    sort_nodes(g)
    assert [n.op for n in g.nodes] == ["Relu", "Neg", "Add"]
    g.nodes = [g.nodes[2], g.nodes[1], g.nodes[0]]
    sort_nodes(g)
    assert [n.op for n in g.nodes] == ["Neg", "Relu", "Add"]
    # a cycle: Relu reads Add's output
    g.nodes[1].inputs[0] = g.nodes[2].outputs[0]
    with pytest.raises(GraphoptError, match="cycle"):
        sort_nodes(g)
    assert isinstance(g.nodes[0], gs.Node)
