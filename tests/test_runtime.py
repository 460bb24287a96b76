"""graphopt.runtime: the one place sessions, drawn inputs and validity checks are made."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import GraphoptError, runtime
from graphopt.runtime import RuntimeRejected

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn.onnx"


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),)):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _mixed():
    """Inputs of four kinds, one with a symbolic leading dim."""
    vi = helper.make_tensor_value_info
    return _model([helper.make_node("Identity", [n], [n + "_out"]) for n in "abcd"],
                  [vi("a", TensorProto.FLOAT, ["n", 3]), vi("b", TensorProto.INT64, [2, 2]),
                   vi("c", TensorProto.BOOL, [64]), vi("d", TensorProto.FLOAT16, [2])],
                  [vi(n + "_out", t, None) for n, t in zip("abcd", (1, 7, 9, 10))])


def _big_matmul(k: int = 600):
    """x[1,k] @ w[k,k]: w is 1.4 MB, over the size at which SessionRecipe shares it."""
    w = np.random.default_rng(1).standard_normal((k, k)).astype(np.float32)
    vi = helper.make_tensor_value_info
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [vi("x", TensorProto.FLOAT, [1, k])], [vi("y", TensorProto.FLOAT, [1, k])],
                  [numpy_helper.from_array(w, "w")]), w


# ------------------------------------------------------------------------------ sessions


@pytest.mark.parametrize("optimize", [False, True])
def test_session_options_spinning_off_one_inter_op_thread(optimize):
    sess = runtime.session(DIGITS, threads=2, optimize=optimize, log_level=3)
    so = sess.get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.inter_op_num_threads == 1
    assert so.intra_op_num_threads == 2
    assert so.log_severity_level == 3
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    assert so.graph_optimization_level == (level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL)
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_options_save_the_optimized_model(tmp_path):
    path = tmp_path / "opt.onnx"
    runtime.session(DIGITS, so=runtime.options(1, optimize=True, optimized_path=str(path)))
    assert onnx.load(str(path)).graph.node  # onnxruntime wrote the model it optimized


@pytest.mark.parametrize("source", ["bytes", "missing-file", "unknown-op"])
def test_rejected_model_is_one_line(tmp_path, source):
    if source == "bytes":
        model = b"not a model"
    elif source == "missing-file":
        model = tmp_path / "nothing.onnx"
    else:
        vi = helper.make_tensor_value_info
        model = _model([helper.make_node("Foo", ["x"], ["y"], domain="com.example")],
                       [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])],
                       opsets=(("", 17), ("com.example", 1)))
    with pytest.raises(RuntimeRejected) as e:
        runtime.session(model)
    assert isinstance(e.value, GraphoptError)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("onnxruntime cannot load the model: ")
    assert msg.endswith(e.value.reason) and e.value.reason
    if source == "unknown-op":
        assert "Foo" in e.value.reason


def test_run_gives_outputs_per_feed():
    feeds = runtime.random_inputs(onnx.load(DIGITS), 3, shapes={"input": [2, 1, 8, 8]})
    outs = runtime.run(onnx.load(DIGITS), feeds)
    assert len(outs) == 3 and all(o[0].shape[0] == 2 for o in outs)
    assert not np.array_equal(outs[0][0], outs[1][0])  # different drawn inputs


def test_session_recipe_shares_big_weights_and_matches_a_plain_session():
    model, w = _big_matmul()
    recipe = runtime.SessionRecipe(model, threads=1)
    assert len(recipe.data) < w.nbytes // 10  # the weight is not in the serialized bytes
    shared = recipe.create()
    assert len(shared._graphopt_keep) == 1  # the buffer onnxruntime reads stays alive
    x = runtime.random_inputs(model, seed=3)[0]
    np.testing.assert_array_equal(shared.run(None, x)[0], runtime.session(model).run(None, x)[0])
    np.testing.assert_allclose(shared.run(None, x)[0], x["x"] @ w, rtol=1e-4, atol=1e-4)


def test_session_recipe_falls_back_to_the_serialized_model(monkeypatch):
    model, _ = _big_matmul()
    recipe = runtime.SessionRecipe(model, threads=1)
    real = runtime.session
    calls = []

    def refuse_shared(src, **kw):  # onnxruntime refusing the in-memory initializers
        calls.append(type(src).__name__)
        if kw.get("so") is recipe.options:
            raise RuntimeRejected("in-memory initializers refused")
        return real(src, **kw)

    monkeypatch.setattr(runtime, "session", refuse_shared)
    sess = recipe.create()
    assert calls == ["bytes", "ModelProto"] and sess.run(None, runtime.random_inputs(model)[0])


# ------------------------------------------------------------------------------- inputs


def test_random_inputs_are_deterministic_and_seeded():
    m = _mixed()
    a = runtime.random_inputs(m, 2, seed=7)
    b = runtime.random_inputs(m, 2, seed=7)
    c = runtime.random_inputs(m, 2, seed=8)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() == {"a", "b", "c", "d"}
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k])
    assert not np.array_equal(a[0]["a"], a[1]["a"])  # n draws, not n copies
    assert not np.array_equal(a[0]["a"], c[0]["a"])


def test_random_inputs_uniform_convention():
    m = _mixed()
    feed = runtime.random_inputs(m, seed=1, shapes={"a": [5, 3]}, ranges={"a": (-2.0, -1.0), "b": (3, 6)})[0]
    assert feed["a"].shape == (5, 3) and feed["a"].dtype == np.float32
    assert feed["a"].min() >= -2.0 and feed["a"].max() < -1.0
    assert feed["b"].dtype == np.int64 and feed["b"].min() >= 3 and feed["b"].max() < 6
    assert feed["c"].dtype == np.bool_ and feed["c"].all()
    assert feed["d"].dtype == np.float16
    sym = runtime.random_inputs(m)[0]["a"]
    assert sym.shape == (1, 3)  # a symbolic dim is 1 unless bound


def test_random_inputs_normal_convention_same_from_model_and_session():
    m = _mixed()
    shapes = {"a": [4, 3]}
    from_model = runtime.random_inputs(m, seed=2, shapes=shapes, normal=True)[0]
    from_session = runtime.random_inputs(runtime.session(m), seed=2, shapes=shapes, normal=True)[0]
    for k in from_model:
        assert from_model[k].dtype == from_session[k].dtype
        np.testing.assert_array_equal(from_model[k], from_session[k])
    assert from_model["a"].min() < 0  # standard normal, not [0, 1)
    assert set(np.unique(from_model["b"])) <= {0, 1}  # ids and masks alike
    assert from_model["c"].any() and not from_model["c"].all()  # 64 drawn bools, not all true


def test_random_inputs_normal_needs_bound_shapes():
    with pytest.raises(GraphoptError, match=r"input 'a' has shape \['n', 3\]: bind it with --input-shape"):
        runtime.random_inputs(_mixed(), normal=True)


# ------------------------------------------------------------------------------ validity


def test_check_accepts_a_valid_model():
    assert runtime.check(onnx.load(DIGITS)) is None
    assert runtime.check(onnx.load(DIGITS), load=False, shapes=True) is None


def test_check_names_the_checker():
    vi = helper.make_tensor_value_info
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, [2])],
               [vi("y", TensorProto.FLOAT, [2])])
    m.graph.node[0].input[0] = "undefined"
    reason = runtime.check(m)
    assert reason.startswith("onnx.checker: ") and "\n" not in reason


def test_check_catches_a_wrong_raw_data_size_without_the_payload():
    model, _ = _big_matmul()
    assert runtime.checker_skeleton(model).ByteSize() < 10_000  # the weight's bytes left out
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    assert "raw_data size" in runtime.check(model, load=False)


def test_check_shapes_is_strict_inference():
    vi = helper.make_tensor_value_info
    m = _model([helper.make_node("Add", ["x", "z"], ["y"])],
               [vi("x", TensorProto.FLOAT, [2, 3]), vi("z", TensorProto.FLOAT, [4, 5])],
               [vi("y", TensorProto.FLOAT, [2, 3])])
    assert runtime.check(m, load=False) is None  # the checker alone does not see it
    reason = runtime.check(m, load=False, shapes=True)
    assert reason.startswith("shape inference: ") and "\n" not in reason


def test_check_names_onnxruntime():
    vi = helper.make_tensor_value_info
    m = _model([helper.make_node("Foo", ["x"], ["y"], domain="com.example")],
               [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])],
               opsets=(("", 17), ("com.example", 1)))
    assert runtime.check(m, load=False) is None
    reason = runtime.check(m)
    assert reason.startswith("onnxruntime: ") and "Foo" in reason and "\n" not in reason


# --------------------------------------------------------------------- one place for sessions

# Modules allowed to build onnxruntime sessions themselves, and why.
_OWN_SESSIONS = {
    "graphopt/runtime.py": "the toolkit itself",
    "graphopt/analysis/memory.py": "its measuring process imports only onnxruntime (graphopt would "
                                   "distort the memory baseline)",
}


def test_sessions_are_made_only_in_graphopt_runtime():
    """No module of the package (graphopt/ and passes/) builds SessionOptions or an
    InferenceSession itself: they all go through graphopt.runtime."""
    pattern = re.compile(r"\b(InferenceSession|SessionOptions)\(")
    offenders = []
    for folder in ("graphopt", "passes"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in _OWN_SESSIONS:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "sessions built outside graphopt.runtime:\n" + "\n".join(offenders)
