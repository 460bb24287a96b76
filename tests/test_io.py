"""graphopt.io: external data, >2 GB models, unsafe locations, atomic writes, and
preservation of everything the passes do not touch (Model round trip and `-p clean`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import io as gio
from graphopt.api import optimize_file
from graphopt.errors import GraphoptError
from graphopt.ir import Model


def small_model(weight_elems: int = 4096) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(weight_elems, dtype=np.float32).reshape(-1, 64) / 100, "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight_elems // 64])
    node = helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm")
    tr = helper.make_node("Transpose", ["W"], ["Wt"], name="tr")
    g = helper.make_graph([tr, node], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def rich_model() -> onnx.ModelProto:
    """A model exercising every field the passes don't own."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])
    one = numpy_helper.from_array(np.ones(3, np.float32), "one")
    # If whose branches read an outer tensor ("h") that is used nowhere else.
    then_g = helper.make_graph([helper.make_node("Add", ["h", "one"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", 3])])
    else_g = helper.make_graph([helper.make_node("Sub", ["h", "one"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", 3])])
    relu = helper.make_node("Relu", ["x"], ["h"], name="relu", doc_string="relu doc")
    iff = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)
    fn_call = helper.make_node("Twice", ["x"], ["z"], name="call", domain="my.domain")
    fn = helper.make_function(
        "my.domain", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    g = helper.make_graph([relu, iff, fn_call], "rich", [x, c], [y, z], [one], doc_string="graph doc")
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)],
        functions=[fn], doc_string="model doc", producer_name="test", producer_version="1.2",
        domain="org.test", model_version=7,
    )
    m.ir_version = 8
    helper.set_model_props(m, {"author": "me", "license": "MIT"})
    ti = m.training_info.add()
    ti.algorithm.CopyFrom(helper.make_graph([], "train", [], []))
    return m


# ------------------------------------------------------------------ preservation


def assert_preserved(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert b.ir_version == a.ir_version
    assert {(o.domain, o.version) for o in b.opset_import} == {(o.domain, o.version) for o in a.opset_import}
    assert [f.SerializeToString() for f in b.functions] == [f.SerializeToString() for f in a.functions]
    assert {p.key: p.value for p in b.metadata_props} == {p.key: p.value for p in a.metadata_props}
    assert (b.doc_string, b.producer_name, b.producer_version, b.domain, b.model_version) == \
        (a.doc_string, a.producer_name, a.producer_version, a.domain, a.model_version)
    assert b.graph.doc_string == a.graph.doc_string
    assert [t.SerializeToString() for t in b.training_info] == [t.SerializeToString() for t in a.training_info]
    for va, vb in ((a.graph.input, b.graph.input), (a.graph.output, b.graph.output)):
        assert [v.SerializeToString() for v in vb] == [v.SerializeToString() for v in va]
    docs_a = {n.name: n.doc_string for n in a.graph.node if n.doc_string}
    docs_b = {n.name: n.doc_string for n in b.graph.node if n.doc_string}
    assert docs_b == docs_a
    ifs_a = [n for n in a.graph.node if n.op_type == "If"]
    ifs_b = [n for n in b.graph.node if n.op_type == "If"]
    assert len(ifs_a) == len(ifs_b)
    for na, nb in zip(ifs_a, ifs_b):
        ga = {at.name: [x.op_type for x in at.g.node] for at in na.attribute}
        gb = {at.name: [x.op_type for x in at.g.node] for at in nb.attribute}
        assert ga == gb


def test_model_round_trip_preserves_everything():
    m = rich_model()
    out = Model.from_onnx(m).to_onnx()
    assert_preserved(m, out)
    # the Relu feeding only the If bodies is kept
    assert sorted(n.op_type for n in out.graph.node) == ["If", "Relu", "Twice"]


def test_clean_preserves_everything(tmp_path):
    m = rich_model()
    src = tmp_path / "rich.onnx"
    onnx.save(m, src)
    dst, report = optimize_file(src, tmp_path / "out.onnx", "clean")
    out = onnx.load(dst)
    assert_preserved(m, out)
    assert sorted(n.op_type for n in out.graph.node) == ["If", "Relu", "Twice"]


def loop_scan_model() -> onnx.ModelProto:
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, [4, 3])
    # Loop: 3 trips, carried value c <- c + k, where k is an outer tensor used only in the body
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["c_in", "k"], ["c_out"])],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("c_in", f, [4, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("c_out", f, [4, 3])],
    )
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["row_out"])],
        "scan_body",
        [helper.make_tensor_value_info("s_in", f, [3]), helper.make_tensor_value_info("row", f, [3])],
        [helper.make_tensor_value_info("s_out", f, [3]), helper.make_tensor_value_info("row_out", f, [3])],
    )
    nodes = [
        helper.make_node("Constant", [], ["trips"], value=numpy_helper.from_array(np.array(3, np.int64))),
        helper.make_node("Constant", [], ["true"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("Abs", ["x"], ["k"], name="k_only_in_body"),
        helper.make_node("Loop", ["trips", "true", "x"], ["looped"], body=body, name="loop"),
        helper.make_node("Constant", [], ["s0"], value=numpy_helper.from_array(np.zeros(3, np.float32))),
        helper.make_node("Scan", ["s0", "looped"], ["total", "cumsum"], body=scan_body,
                         num_scan_inputs=1, name="scan"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    g = helper.make_graph(nodes, "ls", [x], [helper.make_tensor_value_info("cumsum", f, [4, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_clean_keeps_loop_and_scan_bodies(tmp_path):
    from conftest import run_ort

    m = loop_scan_model()
    onnx.checker.check_model(m)
    src = tmp_path / "ls.onnx"
    onnx.save(m, src)
    dst, report = optimize_file(src, tmp_path / "ls.opt.onnx", "clean")
    out = onnx.load(dst)
    assert_preserved(m, out)
    ops = sorted(n.op_type for n in out.graph.node)
    assert "Abs" in ops and "Loop" in ops and "Scan" in ops  # Abs feeds only the Loop body
    assert "Neg" not in ops  # really dead
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(m, feeds)[0])


# ------------------------------------------------------------------ external data


def test_external_data_load_and_save(tmp_path):
    m = small_model()
    expected = numpy_helper.to_array(m.graph.initializer[0])
    src = tmp_path / "m.onnx"
    onnx.save_model(m, src, save_as_external_data=True, location="m.weights", size_threshold=0)
    assert (tmp_path / "m.weights").exists()
    loaded = graphopt.load(src)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), expected)
    # forced external data on save, data file next to the model
    out = tmp_path / "o" / "out.onnx"
    out.parent.mkdir()
    graphopt.save(loaded, out, external_data=True)
    assert (out.parent / "out.onnx.data").exists()
    assert out.stat().st_size < 1000
    again = graphopt.load(out)
    np.testing.assert_array_equal(numpy_helper.to_array(again.graph.initializer[0]), expected)
    # the caller's model still holds its payload
    assert loaded.graph.initializer[0].raw_data
    assert not list(out.parent.glob(".graphopt-*"))


def test_large_models_go_external_automatically(tmp_path, monkeypatch):
    m = small_model(64 * 64)  # 16 KB of weights
    monkeypatch.setattr(gio, "EXTERNAL_DATA_THRESHOLD", 8 * 1024)
    p = graphopt.save(m, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    assert graphopt.load(p).graph.initializer[0].raw_data == m.graph.initializer[0].raw_data
    monkeypatch.setattr(gio, "EXTERNAL_DATA_THRESHOLD", 1 << 30)
    graphopt.save(m, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()


def test_large_model_through_cli_pipeline_goes_external(tmp_path, monkeypatch):
    m = small_model(64 * 64)
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    monkeypatch.setattr(gio, "EXTERNAL_DATA_THRESHOLD", 8 * 1024)
    dst, _ = optimize_file(src, tmp_path / "m.out.onnx", "clean")
    assert (tmp_path / "m.out.onnx.data").exists()


def _with_location(tmp_path: Path, location: str) -> Path:
    m = small_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    p = tmp_path / "evil.onnx"
    with open(p, "wb") as f:
        f.write(m.SerializeToString())
    return p


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd"])
def test_unsafe_external_locations_refused(tmp_path, location):
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16384)
    p = _with_location(d, location)
    with pytest.raises(GraphoptError, match="refusing external data.*(absolute|escapes)"):
        graphopt.load(p)


def test_symlink_escaping_refused(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16384)
    os.symlink(tmp_path / "secret.bin", d / "w.bin")
    p = _with_location(d, "w.bin")
    with pytest.raises(GraphoptError, match="escapes"):
        graphopt.load(p)


def test_missing_external_file(tmp_path):
    p = _with_location(tmp_path, "nothere.bin")
    with pytest.raises(GraphoptError, match="not found"):
        graphopt.load(p)


# ------------------------------------------------------------------ atomic writes


def test_failed_serialization_leaves_nothing(tmp_path, monkeypatch):
    m = small_model()
    dst = tmp_path / "out.onnx"

    def boom(self):
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    with pytest.raises(GraphoptError, match="cannot serialize"):
        graphopt.save(m, dst)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_output(tmp_path, monkeypatch):
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"previous")

    real_replace = os.replace

    def failing_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(GraphoptError, match="cannot write"):
        graphopt.save(small_model(), dst)
    monkeypatch.setattr(os, "replace", real_replace)
    assert dst.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_save_refuses_protected_input(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(small_model(), src)
    before = src.read_bytes()
    with pytest.raises(GraphoptError, match="refusing to overwrite"):
        graphopt.save(small_model(), src, protect=(src,))
    assert src.read_bytes() == before


def test_output_data_file_may_not_overwrite_input_data(tmp_path):
    """Writing out.onnx with external data must not clobber an input named out.onnx.data."""
    src = tmp_path / "in.onnx"
    onnx.save_model(small_model(), src, save_as_external_data=True, location="out.onnx.data",
                    size_threshold=0)
    data_before = (tmp_path / "out.onnx.data").read_bytes()
    with pytest.raises(GraphoptError, match="refusing to overwrite"):
        optimize_file(src, tmp_path / "out.onnx", "clean", external_data=True)
    assert (tmp_path / "out.onnx.data").read_bytes() == data_before
    assert not (tmp_path / "out.onnx").exists()


def test_in_place_overwrites(tmp_path):
    m = small_model()
    m.graph.node.append(helper.make_node("Relu", ["x"], ["dead"], name="dead"))
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    optimize_file(src, None, "dce", in_place=True)
    assert [n.name for n in onnx.load(src).graph.node] == ["tr", "mm"]
    assert not list(tmp_path.glob(".graphopt-*"))


def test_failing_pass_writes_nothing(tmp_path):
    from graphopt import pipeline

    @graphopt.register_pass("test-io-boom")
    class Boom(graphopt.Pass):
        """Always fails."""

        def run(self, model, ctx):
            raise GraphoptError("kaboom")

    try:
        src = tmp_path / "m.onnx"
        onnx.save(small_model(), src)
        with pytest.raises(GraphoptError, match="test-io-boom.*kaboom"):
            optimize_file(src, tmp_path / "out.onnx", "clean,test-io-boom")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    finally:
        pipeline._PASSES.pop("test-io-boom", None)


def test_check_model_skips_payload_but_checks_it():
    """driver.check_model hands onnx.checker a skeleton without the big weights; the
    weights' sizes are still checked, and so are the nodes reading them."""
    from graphopt.driver import check_model
    from graphopt.runtime import checker_skeleton as _checker_skeleton

    m = small_model(64 * 64)
    sk = _checker_skeleton(m)
    assert not sk.graph.initializer and [i.name for i in sk.graph.input] == ["x", "W"]
    assert sk.ByteSize() < 1000
    assert check_model(m, what="m", strict=True)
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    bad.graph.initializer[0].raw_data = bad.graph.initializer[0].raw_data[:-4]
    assert not check_model(bad, what="m")
    with pytest.raises(GraphoptError, match="raw_data size"):
        check_model(bad, what="m", strict=True)
    wrong = onnx.ModelProto()
    wrong.CopyFrom(m)
    wrong.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(GraphoptError, match="fails onnx.checker"):
        check_model(wrong, what="m", strict=True)
    assert m.graph.initializer[0].raw_data  # the caller's model is untouched


# ------------------------------------------------------------------ streamed writing


@pytest.mark.parametrize("keep_bytes", [0, 1 << 20])
def test_streamed_write_equals_serialize_to_string(tmp_path, monkeypatch, keep_bytes):
    """save() writes the model piece by piece; the file is byte-identical to
    SerializeToString (functions, metadata, subgraphs, sparse initializers included),
    whether elements are kept encoded or encoded again when written."""
    import io as pyio

    monkeypatch.setattr(gio.wire, "_KEEP_BYTES", keep_bytes)
    for m in (rich_model(), loop_scan_model(), small_model(64 * 64)):
        buf = pyio.BytesIO()
        n = gio.write_model(m, buf)
        assert buf.getvalue() == m.SerializeToString() and n == len(buf.getvalue())
        p = graphopt.save(m, tmp_path / "m.onnx")
        assert p.read_bytes() == m.SerializeToString()


def test_streamed_write_keeps_unknown_fields(tmp_path):
    m = small_model()
    data = m.SerializeToString() + bytes([0xF8, 0x07, 0x01])  # field 127, varint 1: unknown
    m2 = onnx.ModelProto()
    m2.ParseFromString(data)
    assert graphopt.save(m2, tmp_path / "u.onnx").read_bytes() == m2.SerializeToString()


def test_streamed_write_refuses_over_2gb(tmp_path, monkeypatch):
    monkeypatch.setattr(gio.wire, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(GraphoptError, match="cannot serialize"):
        graphopt.save(small_model(), tmp_path / "o.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


def test_memory_mapped_load_owns_its_data(tmp_path):
    """load() parses a memory-mapped file; the model keeps its own copy of every byte, so
    it stays intact after the map is closed and the file replaced."""
    m = rich_model()
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    loaded = graphopt.load(src)
    src.write_bytes(b"\0" * len(m.SerializeToString()))
    junk = [bytearray(1 << 20) for _ in range(8)]  # reuse freed pages
    assert loaded.SerializeToString() == m.SerializeToString()
    del junk


def test_streamed_write_raw_tensors_and_size_mismatch(tmp_path, monkeypatch):
    """Large initializers are written field by field around raw_data (fields after it,
    such as doc_string, included); a raw_data whose length disagrees with the shape
    falls back to plain encoding. Both byte-identical to SerializeToString."""
    import io as pyio

    monkeypatch.setattr(gio.wire, "_KEEP_BYTES", 16)
    m = small_model(64)
    t = m.graph.initializer[0]
    t.doc_string = "weights"
    t.metadata_props.add(key="k", value="v")
    buf = pyio.BytesIO()
    gio.write_model(m, buf)
    assert buf.getvalue() == m.SerializeToString()
    t.raw_data = t.raw_data[:-4]  # malformed: one element short
    buf = pyio.BytesIO()
    gio.write_model(m, buf)
    assert buf.getvalue() == m.SerializeToString()


# ------------------------------------------------- large models: weights left in their files


def external_rich_model(tmp_path: Path) -> Path:
    """Weights in a data file: a main-graph initializer, one inside an If branch, one in a
    Constant node's tensor attribute, and a small one; `clean` removes the Identity."""
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), "W")
    sub_w = numpy_helper.from_array(rng.standard_normal((512,)).astype(np.float32), "B")
    const_v = numpy_helper.from_array(rng.standard_normal((512,)).astype(np.float32), "cv")
    small = numpy_helper.from_array(np.float32(2.0).reshape(1), "s")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])
    then_g = helper.make_graph([helper.make_node("Add", ["h", "B"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 512])], [sub_w])
    else_g = helper.make_graph([helper.make_node("Mul", ["h", "s"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 512])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Constant", [], ["k"], name="k", value=const_v),
             helper.make_node("Add", ["m", "k"], ["a"], name="add"),
             helper.make_node("Identity", ["a"], ["h"], name="id"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    m = helper.make_model(helper.make_graph(nodes, "g", [x, c], [y], [big, small]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(m, src, save_as_external_data=True, location="m.data", size_threshold=128)
    # onnx.save leaves tensor attributes inline: move the Constant's value out by hand
    m = onnx.load(src, load_external_data=False)
    t = m.graph.node[1].attribute[0].t
    data = src.with_name("m.data")
    offset = data.stat().st_size
    with open(data, "ab") as f:
        f.write(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "m.data"), ("offset", str(offset)), ("length", str(512 * 4))):
        t.external_data.add(key=k, value=v)
    onnx.save(m, src)
    return src


def _external_count(path: Path) -> int:
    return sum(t.data_location == TensorProto.EXTERNAL
               for t in gio.iter_model_tensors(onnx.load(path, load_external_data=False)))


@pytest.mark.parametrize("mode", [None, True, False])
def test_external_input_is_mapped_not_loaded(tmp_path, mode, caplog):
    """optimize_file leaves external data in its file (arrays over a memory map) and
    writes the output from those arrays: same outputs, inline or external."""
    from conftest import run_ort

    src = external_rich_model(tmp_path)
    assert _external_count(src) == 3
    proto, _ = gio.load_with_sources(src, lazy=True)
    assert sum(t.data_location == TensorProto.EXTERNAL for t in gio.iter_model_tensors(proto)) == 3
    model = Model.from_onnx(proto)
    assert gio.map_external_data(model.graph, src.parent) == 3
    w = next(t for t in model.graph.tensors().values() if t.name == "W")
    assert isinstance(w.values, np.ndarray) and w.values.base is not None  # a view, not a copy

    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    optimize_file(src, out, "clean", external_data=mode)
    assert "onnx.checker" not in caplog.text  # the input's checks ran, on its skeleton
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before
    assert (out.parent / "o.onnx.data").exists() == (mode is True)
    if mode is True:
        assert _external_count(out) == 3
    onnx.checker.check_model(str(out))
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)}
    for cond in (True, False):
        feeds["cond"] = np.array(cond)
        np.testing.assert_array_equal(run_ort(str(out), feeds)[0], run_ort(str(src), feeds)[0])
    assert "Identity" not in [n.op_type for n in onnx.load(out).graph.node]


def test_writes_into_mapped_weights_stay_private(tmp_path):
    """The map is copy-on-write: a pass that changes a weight in place changes the output,
    never the input's data file."""
    src = external_rich_model(tmp_path)
    data = (src.parent / "m.data").read_bytes()
    proto, _ = gio.load_with_sources(src, lazy=True)
    model = Model.from_onnx(proto)
    gio.map_external_data(model.graph, src.parent)
    w = next(t for t in model.graph.tensors().values() if t.name == "W")
    w.values[0, 0] = 1234.0
    out_proto, arrays = gio.export_model(model)
    out = tmp_path / "o.onnx"
    gio.save(out_proto, out, external_data=True, arrays=arrays)
    assert (src.parent / "m.data").read_bytes() == data
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert got["W"][0, 0] == np.float32(1234.0)


def test_export_model_streams_the_same_bytes(tmp_path):
    """Written from the arrays (stubs), the model file equals SerializeToString of the
    plain export: the stubs stand for exactly the tensors to_onnx builds."""
    src = external_rich_model(tmp_path)
    proto, _ = gio.load_with_sources(src, lazy=True)
    model = Model.from_onnx(proto)
    gio.map_external_data(model.graph, src.parent)
    plain = model.to_onnx().SerializeToString()
    stubbed, arrays = gio.export_model(model)
    assert len(arrays) == 3 and len(stubbed.SerializeToString()) < len(plain) // 4
    out = tmp_path / "o.onnx"
    gio.save(stubbed, out, external_data=False, arrays=arrays)
    assert out.read_bytes() == plain
    # the model is unchanged by the export
    assert model.to_onnx().SerializeToString() == plain


_PEAK = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "assert r.returncode == 0, r.stderr\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def _peak_rss(cmd: list[str]) -> int:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


def test_peak_memory_of_clean_on_an_external_data_model(tmp_path):
    """`graphopt -p clean --no-verify` on a 256 MB external-data model: the peak resident
    memory beyond the command's own (measured on a tiny model) stays under 1.5x the
    weights. Before memory-mapping it was about 2x (each weight in protobuf, then again
    in the output's protobuf)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_memory import generate, graphopt_cmd, model_size

    src = generate(tmp_path / "big", 256 * 10**6, dim=2048)
    size = model_size(src)
    tiny = tmp_path / "tiny.onnx"
    onnx.save(small_model(), tiny)
    base = _peak_rss([graphopt_cmd(), str(tiny), "-p", "clean", "--no-verify", "-q", "-o", str(tmp_path / "t.onnx")])
    peak = _peak_rss([graphopt_cmd(), str(src), "-p", "clean", "--no-verify", "-q",
                      "-o", str(tmp_path / "out.onnx")])
    assert (peak - base) / size < 1.5, (peak, base, size)
    assert len(onnx.load(tmp_path / "out.onnx", load_external_data=False).graph.node) < \
        len(onnx.load(src, load_external_data=False).graph.node)


@pytest.mark.parametrize("chunk", [64, 4096])
def test_chunked_parse_equals_plain_parse(tmp_path, monkeypatch, chunk):
    """Large files are parsed in runs of whole fields (the map's parsed pages dropped as it
    goes): the result equals onnx.load's, and a damaged file is still refused in one line."""
    monkeypatch.setattr(gio.wire, "_CHUNK_BYTES", chunk)
    m = rich_model()
    for i in range(5):
        m.graph.initializer.append(numpy_helper.from_array(
            np.random.default_rng(i).standard_normal((40 + i, 17)).astype(np.float32), f"w{i}"))
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    assert graphopt.load(src).SerializeToString() == onnx.load(src).SerializeToString()
    data = src.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(GraphoptError, match="not a valid ONNX model"):
        graphopt.load(bad)


def test_training_info_model_with_large_weights_through_optimize_file(tmp_path):
    """Models with training_info are checked whole: the weight stubs of the export must not
    reach onnx.checker as files it cannot find."""
    m = rich_model()
    m.graph.initializer.append(numpy_helper.from_array(np.ones((128, 3), np.float32), "big"))
    m.graph.node.append(helper.make_node("Mul", ["big", "x"], ["bx"], name="mul"))
    m.graph.output.append(helper.make_tensor_value_info("bx", TensorProto.FLOAT, [128, 3]))
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    dst, _ = optimize_file(src, tmp_path / "o.onnx", "clean", external_data=False)
    out = onnx.load(dst)
    assert len(out.training_info) == 1 and "big" in {t.name for t in out.graph.initializer}
    onnx.checker.check_model(out)
