"""Tests of pass `distill` (torch): the ONNX -> torch interpreter, the write-back
contract (only the trained initializers change), the teacher, refusals, and the accuracy
it recovers after `prune` on the trained digits CNN.

Bounds asserted (measured first; see the comments at each):
- interpreter vs onnxruntime: max abs difference of the outputs <= 1e-4 (float graphs,
  measured 3e-6 on digits, 6e-8 on the PP-OCR classifier); on QDQ graphs relative L2
  <= 2e-3 (measured 3.5e-4: onnxruntime's integer kernels requantize, so an activation
  may land one rounding step apart);
- QAT-lite (prune(0.5)+quant, then distill 200 steps): digits accuracy up by >= 2 points
  (measured 80.1% -> 86.9%);
- the written-back model in onnxruntime equals the interpreter with the trained weights
  to 1e-4;
- digits held-out test accuracy (297 labelled images never trained on; the samples are
  1,500 unlabelled training images of sklearn's digits): prune(0.3)+distill within 1
  point of FP32, prune(0.5)+distill within 2 points, at default options.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import graphopt
from graphopt import GraphoptError
from graphopt.testing.tasks import packaged_model
from conftest import MODELS

torch = pytest.importorskip("torch", reason="pip install 'graphopt[distill]'")

from graphopt.passes.distill.interp import TorchGraph  # noqa: E402
from graphopt.passes.distill.train import free_batch  # noqa: E402

DIGITS = MODELS / "digits_cnn.onnx"
# QDQ everywhere, whatever this machine's timing says (quant keeps float when INT8 does
# not measure faster; the tests need the QDQ graph).
QUANT = "quant(mode=static, measure=false, accuracy=false)"


def _run(model, feeds):
    sess = ort.InferenceSession(free_batch(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _interp(model, feeds):
    with torch.no_grad():
        return [t.numpy() for t in TorchGraph(model)({k: torch.from_numpy(v) for k, v in feeds.items()})]


@pytest.fixture(scope="module")
def digits():
    """(model, test inputs, labels, unlabelled training inputs). The unlabelled inputs
    are sklearn's digits [0, 1500), the shipped model's training split
    (models/generate.py), preprocessed the same way (/16); the test split [1500, 1797)
    is never trained on."""
    from sklearn.datasets import load_digits

    test = np.load(MODELS / "digits_test.npz")
    train = (load_digits().images.astype(np.float32) / 16.0)[:1500, None]
    return onnx.load(DIGITS), test["input"].astype(np.float32), test["label"], train


def _rows(x):
    """One sample per image (works for a model exported with a fixed batch of 1 too)."""
    return [{"input": x[i:i + 1]} for i in range(len(x))]


def _acc(model, x, labels):
    return float((_run(model, {"input": x})[0].argmax(-1) == labels).mean())


def _strip_weights(model: onnx.ModelProto) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        t.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(f)
    return m.SerializeToString()


def _ppocr_cls():
    return packaged_model("rapidocr_onnxruntime", "ch_ppocr_mobile_v2.0_cls_infer.onnx")


# ------------------------------------------------------------------------ interpreter


def test_interpreter_matches_onnxruntime(digits):
    model, x, _, _ = digits
    feeds = {"input": x[:16]}
    got, ref = _interp(model, feeds)[0], _run(model, feeds)[0]
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.skipif(_ppocr_cls() is None, reason="pip install rapidocr-onnxruntime")
def test_interpreter_matches_onnxruntime_ppocr_cls():
    """A real MobileNetV3-style model (HardSigmoid SE blocks, Shape/Slice/Concat/Reshape,
    MatMul head, Softmax)."""
    model = onnx.load(_ppocr_cls())
    x = np.random.default_rng(0).random((2, 3, 48, 192)).astype(np.float32)
    name = model.graph.input[0].name
    got, ref = _interp(model, {name: x})[0], _run(model, {name: x})[0]
    assert np.abs(got - ref).max() <= 1e-4


def test_interpreter_qdq_fake_quant(digits):
    """After `quant`: QuantizeLinear/DequantizeLinear run as fake-quant; the int8 weights
    and int32 biases behind DequantizeLinear are the trainable tensors."""
    model, x, _, train = digits
    q = graphopt.optimize(model, QUANT, samples=_rows(train[:64]), verify=False)
    feeds = {"input": x[:32]}
    got, ref = _interp(q, feeds)[0], _run(q, feeds)[0]
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    print(f"QDQ interpreter vs onnxruntime: rel L2 {rel:.2e}, top-1 agreement {(got.argmax(1) == ref.argmax(1)).mean()}")
    assert rel <= 2e-3  # onnxruntime's integer kernels requantize: one rounding step apart at most
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    tg = TorchGraph(q)
    assert tg.qweights and set(tg.qweights) == set(tg.keys)


def test_refuses_op_without_training_rule(tmp_path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Hardmax", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    teacher = tmp_path / "t.onnx"
    onnx.save(m, teacher)
    samples = [{"x": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)}]
    with pytest.raises(GraphoptError, match="no training rule for op 'Hardmax'"):
        graphopt.optimize(m, f"distill(teacher={teacher})", samples=samples, verify=False)
    with pytest.raises(GraphoptError, match="needs samples"):
        graphopt.optimize(m, f"distill(teacher={teacher})", verify=False)
    with pytest.raises(GraphoptError):
        graphopt.optimize(m, "distill(lr=5)", samples=samples, verify=False)


# ------------------------------------------------------------------------ the pass


def test_writes_back_only_trained_weights(digits, tmp_path):
    """prune -> distill: the teacher is the model before prune (kept by the PassManager);
    the output differs from prune's output only in the values of Conv/Gemm weights and
    biases; onnxruntime on the result equals the interpreter with the trained weights."""
    model, x, _, train = digits
    samples = [{"input": train[:256]}]
    pruned = graphopt.optimize(model, "prune(ratio=0.5, round_to=1)", samples=samples, verify=False)
    out, report = graphopt.optimize(model, "prune(ratio=0.5, round_to=1),distill(steps=40)", samples=samples,
                                    verify=False, return_report=True)
    stats = report.records[-1].stats
    assert report.records[-1].changed, stats
    assert _strip_weights(out) == _strip_weights(pruned)  # byte-identical but for weight values
    before = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    trainable = {i for n in pruned.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for i in n.input[1:]}
    assert changed and changed <= trainable, changed - trainable
    assert stats["held_out_after"]["loss"] <= stats["held_out_before"]["loss"]
    feeds = {"input": x[:32]}
    assert np.abs(_run(out, feeds)[0] - _interp(out, feeds)[0]).max() <= 1e-4
    # The same with the teacher given as a path, on the pruned model as input.
    path = tmp_path / "teacher.onnx"
    onnx.save(model, path)
    out2 = graphopt.optimize(pruned, f"distill(steps=40, teacher={path})", samples=samples, verify=False)
    assert _strip_weights(out2) == _strip_weights(pruned)
    assert _acc(out2, x, digits[2]) >= _acc(pruned, x, digits[2]) - 0.01


def test_first_lossy_pass_has_no_teacher(digits):
    model, _, _, train = digits
    out, report = graphopt.optimize(model, "distill(steps=5)", samples=[{"input": train[:32]}], verify=False,
                                    return_report=True)
    assert not report.records[0].changed and "no teacher" in report.records[0].stats["reason"]
    w0 = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(np.array_equal(w0[t.name], numpy_helper.to_array(t)) for t in out.graph.initializer)


def test_verified_pipeline(digits):
    """The verifier accepts the distilled model under distill's budget (on real samples)."""
    model, _, _, train = digits
    out = graphopt.optimize(model, "prune(ratio=0.3),distill(steps=20)", samples=[{"input": train[:128]}])
    assert len(out.graph.node) > 0


def test_qat_lite_after_quant(digits):
    """quant -> distill: the int8 weights are re-trained through fake-quant and written
    back as int8 with their own scales; the graph is unchanged otherwise."""
    model, x, labels, train = digits
    samples = _rows(train[:256])
    q = graphopt.optimize(model, f"prune(ratio=0.5, round_to=1),{QUANT}", samples=samples, verify=False)
    out, report = graphopt.optimize(model, f"prune(ratio=0.5, round_to=1),{QUANT},distill(steps=200)",
                                    samples=samples, verify=False, return_report=True)
    assert _strip_weights(out) == _strip_weights(q)
    ints = {t.name: t.data_type for t in q.graph.initializer}
    changed = [t.name for t, u in zip(q.graph.initializer, out.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))]
    assert changed and all(ints[n] in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32)
                           for n in changed)
    a_q, a_d = _acc(q, x, labels), _acc(out, x, labels)
    print(f"digits prune(0.5)+quant {a_q:.4f}, +distill (QAT-lite) {a_d:.4f}")
    assert a_d >= a_q + 0.02, (a_q, a_d)


# ------------------------------------------------------------------------ accuracy


@pytest.mark.slow
def test_digits_prune_distill_accuracy(digits, tmp_path):
    """The issue's bar: prune(0.3)+distill within 1 point of FP32, prune(0.5)+distill
    within 2 points, at default options (the speed side is in benchmarks/bench_prune.py
    --digits). Also the exact-ratio widths (round_to=1, all six convs pruned), the harder
    case, where distill must win back most of what pruning lost."""
    model, x, labels, train = digits
    samples = [{"input": train}]
    acc = {"fp32": _acc(model, x, labels)}
    teacher = tmp_path / "fp32.onnx"
    onnx.save(model, teacher)
    for spec in ("prune(ratio=0.3)", "prune(ratio=0.5)", "prune(ratio=0.5, round_to=1)"):
        pruned = graphopt.optimize(model, spec, samples=samples, verify=False)
        acc[spec] = _acc(pruned, x, labels)  # same as `spec,distill` in one pipeline, pruned once here
        acc[spec + ",distill"] = _acc(graphopt.optimize(pruned, f"distill(teacher={teacher})", samples=samples,
                                                        verify=False), x, labels)
    print("digits accuracy:", acc)
    assert acc["fp32"] > 0.95
    assert acc["prune(ratio=0.3),distill"] >= acc["fp32"] - 0.01, acc
    assert acc["prune(ratio=0.5),distill"] >= acc["fp32"] - 0.02, acc
    exact = "prune(ratio=0.5, round_to=1)"
    assert acc[exact + ",distill"] >= acc["fp32"] - 0.03, acc
    assert acc[exact + ",distill"] >= acc[exact] + 0.05, acc


# ------------------------------------------------------------------------ sparsify


@pytest.mark.slow
def test_sparsify_and_distill_keeps_the_zeros(digits):
    """sparsify(0.5): half of every large Conv/Gemm weight is zero, the zipped model is
    smaller (measured 108 KB -> 64 KB), nothing else changes; distill after it keeps the
    zeros and wins back the accuracy (measured 87.9% -> 97.6% at 500 steps, FP32 98.0%)."""
    import zlib

    model, x, labels, train = digits
    sp, rep = graphopt.optimize(model, "sparsify(ratio=0.5)", verify=False, return_report=True)
    stats = rep.records[0].stats
    assert _strip_weights(sp) == _strip_weights(graphopt.Model.from_onnx(model).to_onnx())  # graphopt's round trip
    assert all(v >= 0.5 for v in stats["per_layer"].values()) and stats["layers"] >= 5
    assert stats["zipped_bytes_after"] < 0.7 * stats["zipped_bytes_before"]
    assert abs(stats["zipped_bytes_after"] - len(zlib.compress(sp.SerializeToString(), 6))) < 1024
    out = graphopt.optimize(model, "sparsify(ratio=0.5),distill(steps=500)", samples=[{"input": train}], verify=False)
    zeros = {t.name: int((numpy_helper.to_array(t) == 0).sum()) for t in sp.graph.initializer}
    for t in out.graph.initializer:
        if zeros[t.name] >= 0.2 * numpy_helper.to_array(t).size:
            assert int((numpy_helper.to_array(t) == 0).sum()) >= zeros[t.name], t.name
    acc = {"fp32": _acc(model, x, labels), "sparse": _acc(sp, x, labels), "distilled": _acc(out, x, labels)}
    print("digits sparsify(0.5):", acc)
    assert acc["distilled"] >= acc["fp32"] - 0.02, acc
    assert acc["distilled"] >= acc["sparse"] + 0.03, acc


def test_sparsify_blocks():
    from graphopt.passes.sparsify import _sparsify

    w = np.random.default_rng(0).standard_normal((8, 16, 3, 3)).astype(np.float32)
    out = _sparsify(w, 0.5, 4, in_axis=1)
    blocks = np.moveaxis(out, 1, -1).reshape(8, 3, 3, 4, 4)
    nz = (blocks != 0).any(-1)
    assert ((blocks == 0).all(-1) | (blocks != 0).all(-1)).all()  # whole blocks or nothing
    assert nz.mean() == 0.5
    kept = np.moveaxis(w, 1, -1).reshape(8, 3, 3, 4, 4)
    norms = np.sqrt((kept ** 2).sum(-1))
    assert norms[nz].min() >= norms[~nz].max()  # the smallest blocks went
    with pytest.raises(GraphoptError):
        graphopt.optimize(onnx.load(DIGITS), "sparsify(ratio=1.0)", verify=False)


def _single(op, inputs, attrs=None, consts=(), opset=17, n_out=1):
    """A one-node graph: float inputs `inputs` (name -> array), constant inputs `consts`."""
    names = list(inputs) + [c[0] for c in consts]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape))
                                        for k, v in inputs.items()],
                          [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in consts])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _i64(*v):
    return np.array(v, dtype=np.int64)


@pytest.mark.parametrize("case", [
    ("Slice", {}, [("s", _i64(5)), ("e", _i64(0)), ("a", _i64(3)), ("st", _i64(-2))]),
    ("Slice", {}, [("s", _i64(-3, 1)), ("e", _i64(100, -1)), ("a", _i64(2, 3))]),
    ("Split", {"axis": 1}, [("sp", _i64(1, 2))], 17, 2),
    ("Pad", {"mode": "reflect"}, [("p", _i64(0, 0, 1, 2, 0, 0, 2, 1))]),
    ("Pad", {"mode": "edge"}, [("p", _i64(0, 0, 1, 0, 0, 0, 0, 3))]),
    ("Pad", {}, [("p", _i64(0, 1, 1, 0, 0, 0, 0, 3)), ("v", np.array(1.5, np.float32))]),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [0, 1, 1, 0], "strides": [2, 2]}, []),
    ("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}, []),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, []),
    ("MaxPool", {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}, []),
    ("Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))]),
    ("Resize", {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
     [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))]),
    ("Gather", {"axis": 2}, [("i", _i64(-1, 0, 2))]),
    ("Softmax", {"axis": 1}, [], 11),
    ("Softmax", {"axis": 2}, [], 17),
    ("ReduceMean", {"keepdims": 0}, [("ax", _i64(1, -1))], 18),
    ("ReduceMean", {"axes": [2]}, [], 13),
    ("Transpose", {"perm": [0, 2, 3, 1]}, []),
    ("Flatten", {"axis": 2}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, []),
    ("LeakyRelu", {"alpha": 0.2}, []),
], ids=lambda c: c[0])
def test_op_rules_match_onnxruntime(case):
    op, attrs, consts = case[0], case[1], case[2]
    opset = case[3] if len(case) > 3 else 17
    n_out = case[4] if len(case) > 4 else 1
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7)).astype(np.float32)
    m = _single(op, {"x": x}, attrs, consts, opset, n_out)
    ref = _run(m, {"x": x})
    got = _interp(m, {"x": x})
    for a, b in zip(ref, got):
        assert a.shape == b.shape, (a.shape, b.shape)
        assert np.abs(a - b).max() <= 1e-5
