"""ort-nchwc: onnxruntime's blocked layout written ahead of time. The filter layouts are
checked against onnxruntime's own rewrite of the same model, and whole networks against
the original under the verifier (float contract)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.passes.nchwc import _reorder_oihwbibo, _reorder_oihwbo, probe_block_size
from graphopt.testing import archs

from conftest import run_ort

B = probe_block_size()
pytestmark = pytest.mark.skipif(B == 0, reason="onnxruntime uses no NCHWc layout on this CPU")
RNG = np.random.default_rng(0)


def _w(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _tiny(c0=3, c=32):
    """First conv (NCHW input) -> 3x3 conv -> depthwise -> 1x1 conv + residual -> pools."""
    inits = [_w("w0", (c, c0, 3, 3)), _w("b0", (c,)), _w("w1", (c, c, 3, 3)), _w("b1", (c,)),
             _w("wd", (c, 1, 3, 3)), _w("w2", (c, c, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "wd"], ["cd"], pads=[1, 1, 1, 1], group=c),
             helper.make_node("Conv", ["cd", "w2"], ["c2"]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c0, 33, 33])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("r1", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_filter_layouts_match_onnxruntime(tmp_path):
    m = _tiny()
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    theirs = onnx.load(str(tmp_path / "all.onnx"))
    packed = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    orig = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    convs = [n for n in theirs.graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
    assert len(convs) == 4
    ours = [_reorder_oihwbo(orig["w0"], B), _reorder_oihwbibo(orig["w1"], B),
            _reorder_oihwbo(orig["wd"], B), _reorder_oihwbibo(orig["w2"], B)]
    for node, mine in zip(convs, ours):
        np.testing.assert_array_equal(packed[node.input[1]], mine)


def test_tiny_network_is_blocked_and_verified():
    m = _tiny()
    out, report = graphopt.optimize(m, "clean,fuse,ort-nchwc", target="ort", return_report=True)
    rec = [r for r in report.records if r.name == "ort-nchwc"][0]
    assert rec.changed and rec.extra["verify"]["status"] == "ok"
    ops = collections.Counter((n.domain, n.op_type) for n in out.graph.node)
    assert ops[("com.microsoft.nchwc", "Conv")] == 4
    assert ops[("com.microsoft.nchwc", "MaxPool")] == 1 and ops[("com.microsoft.nchwc", "GlobalAveragePool")] == 1
    assert ops[("", "Conv")] == 0
    # r1 is a graph output as well as blocked inside: one ReorderOutput each, names kept
    assert ops[("com.microsoft.nchwc", "ReorderOutput")] == 2
    assert [o.name for o in out.graph.output] == ["y", "r1"]
    assert {p.key: p.value for p in out.metadata_props}["graphopt.nchwc_block"] == str(B)
    x = {"x": RNG.standard_normal((1, 3, 33, 33)).astype(np.float32)}
    for a, b in zip(run_ort(m, x), run_ort(out, x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2"])
def test_reference_networks(arch):
    m = getattr(archs, arch)(image=64, width=0.5)
    out, report = graphopt.optimize(m, "clean,fuse,ort-nchwc", target="ort", return_report=True)
    rec = [r for r in report.records if r.name == "ort-nchwc"][0]
    assert rec.changed and rec.extra["verify"]["status"] == "ok", rec.extra["verify"]
    convs = sum(1 for n in m.graph.node if n.op_type == "Conv")
    # every convolution whose channel counts fit the block size is converted
    assert rec.stats["conv"] >= 0.6 * convs
    onnx.checker.check_model(out)


def test_only_for_target_ort():
    m = _tiny()
    out = graphopt.optimize(m, "ort-nchwc", target="onnx")
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in m.graph.node]


@pytest.mark.parametrize("c", [B + 4, B + 8, 2 * B - 4])
def test_unaligned_channels_are_padded(c):
    """Channel counts that are not a multiple of the block: zero filters pad the outputs,
    zero weights ignore the padded inputs, ReorderOutput crops; the outputs still match."""
    m = _tiny(c0=3, c=c)
    out, report = graphopt.optimize(m, "ort-nchwc", target="ort", return_report=True)
    rec = report.records[0]
    assert rec.stats["conv"] == 4 and rec.extra["verify"]["status"] == "ok", rec.extra["verify"]
    x = {"x": RNG.standard_normal((1, 3, 33, 33)).astype(np.float32)}
    for a, b in zip(run_ort(m, x), run_ort(out, x)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
