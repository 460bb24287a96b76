"""ir.export_graph: a graph rewritten from a model (gs.import_onnx), exported with the
rest of that model kept (what quantize's export_like / keep_model_fields did by hand)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from test_io import assert_preserved, rich_model


def ir3_model() -> onnx.ModelProto:
    """IR 3: the weight is an initializer and, as that IR requires, a graph input too."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    wi = helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g", [x, wi], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)], producer_name="old")
    m.ir_version = 3
    return m


def _add_scale(g: gs.Graph) -> None:
    """A rewrite adding a constant: y = (x @ W) * 2."""
    mm = next(n for n in g.nodes if n.op == "MatMul")
    y = mm.outputs[0]
    mid = gs.Variable("mm_out", dtype=np.float32)
    mm.outputs = [mid]
    two = gs.Constant("two", np.array(2.0, dtype=np.float32))
    g.nodes.append(gs.Node("Mul", inputs=[mid, two], outputs=[y], name="scale"))


def test_ir3_lists_every_initializer_as_input_and_keeps_the_version():
    m = ir3_model()
    g = gs.import_onnx(m)
    _add_scale(g)
    out = ir.export_graph(g, m)
    assert out.ir_version == 3
    inputs = {i.name for i in out.graph.input}
    assert {t.name for t in out.graph.initializer} == {"W", "two"}
    assert {"W", "two"} <= inputs
    assert out.producer_name == "old"
    onnx.checker.check_model(out)
    x = np.ones((2, 3), np.float32)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    want = x @ (np.arange(12, dtype=np.float32).reshape(3, 4) / 10) * 2
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6)


def test_ir4_and_later_keep_initializer_inputs_they_listed_only():
    m = ir3_model()
    m.ir_version = 7
    g = gs.import_onnx(m)
    _add_scale(g)
    out = ir.export_graph(g, m)
    assert out.ir_version == 7
    assert [i.name for i in out.graph.input] == ["x", "W"]  # "two" is not made an input


def test_everything_but_the_graph_is_kept():
    m = rich_model()
    out = ir.export_graph(gs.import_onnx(m), m)
    assert_preserved(m, out)
    # the opset imports are like's own entries, byte for byte (timing-cache keys)
    assert [o.SerializeToString() for o in out.opset_import] == [o.SerializeToString() for o in m.opset_import]


def test_a_custom_domain_the_rewrite_introduces_gets_an_opset_import():
    m = ir3_model()
    m.ir_version = 8
    m.opset_import[0].version = 17
    g = gs.import_onnx(m)
    mm = next(n for n in g.nodes if n.op == "MatMul")
    y = mm.outputs[0]
    mid = gs.Variable("mm_out", dtype=np.float32)
    mm.outputs = [mid]
    g.nodes.append(gs.Node("FastGelu", inputs=[mid], outputs=[y], name="gelu", domain="com.microsoft"))
    out = ir.export_graph(g, m)
    assert ("com.microsoft", 1) in {(o.domain, o.version) for o in out.opset_import}
    assert ("", 17) in {(o.domain, o.version) for o in out.opset_import}


def test_like_is_not_modified():
    m = ir3_model()
    before = m.SerializeToString()
    g = gs.import_onnx(m)
    _add_scale(g)
    ir.export_graph(g, m)
    assert m.SerializeToString() == before
