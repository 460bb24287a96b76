"""The verifier: it catches broken passes (with small counterexamples), reverts on
request, and raises no false alarms on real models."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import graphopt
from graphopt import Model, Pass, PassResult, VerificationError, register_pass
from graphopt import pipeline as _pipeline
from graphopt.cli import main as cli_main
from graphopt.ir import const_value
from graphopt.testing.tasks import packaged_model
from graphopt.verify import Contract, VerifyInstrument, compare
from graphopt.verify.contracts import check_output
from graphopt.verify.inputs import InputSpace

from conftest import ZOO, run_ort

RNG = np.random.default_rng(0)


def conv_model(opset: int = 17) -> onnx.ModelProto:
    """x[N,3,H,W] -> Conv(+bias) -> Relu -> Slice(channels 0:3) -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = (rng.standard_normal(4) + 2).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Relu", ["c"], ["r"], name="relu"),
        h.make_node("Slice", ["r", "starts", "ends", "axes"], ["y"], name="slice"),
    ]
    inits = [nh.from_array(w, "w"), nh.from_array(b, "b"),
             nh.from_array(np.array([0], np.int64), "starts"),
             nh.from_array(np.array([3], np.int64), "ends"),
             nh.from_array(np.array([1], np.int64), "axes")]
    g = h.make_graph(nodes, "conv", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, "H", "W"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3, "H", "W"])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def _node(model: Model, op: str):
    return next(n for n in model.graph.nodes if n.op == op)


def _flip_sign(model: Model) -> None:
    w = _node(model, "Conv").inputs[1]
    w.values = -const_value(w)


def _drop_bias(model: Model) -> None:
    conv = _node(model, "Conv")
    del conv.inputs[2]


def _swap_channels(model: Model) -> None:
    w = _node(model, "Conv").inputs[1]
    v = const_value(w).copy()
    v[[0, 1]] = v[[1, 0]]
    w.values = v


def _slice_off_by_one(model: Model) -> None:
    s = _node(model, "Slice")
    s.inputs[1].values = np.array([1], np.int64)
    s.inputs[2].values = np.array([4], np.int64)


BAD = {"flip-sign": _flip_sign, "drop-bias": _drop_bias, "swap-channels": _swap_channels,
       "slice-off-by-one": _slice_off_by_one}


@pytest.fixture
def bad_passes():
    names = []
    for name, fn in BAD.items():
        cls = type(f"Bad_{name}", (Pass,), {
            "__doc__": f"deliberately wrong: {name}", "contract": "float",
            "run": lambda self, model, ctx, fn=fn: (fn(model), PassResult(True))[1]})
        register_pass(f"test-bad-{name}")(cls)
        names.append(f"test-bad-{name}")
    yield names
    for n in names:
        _pipeline._PASSES.pop(n, None)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_pass_is_caught_with_small_counterexample(bad, bad_passes, tmp_path):
    model = conv_model()
    with pytest.raises(VerificationError) as e:
        graphopt.optimize(model, f"test-bad-{bad}", verify_options={"repro_dir": str(tmp_path)})
    msg = str(e.value)
    assert f"test-bad-{bad}" in msg and "'y'" in msg
    (folder,) = tmp_path.glob(f"*-01-test-bad-{bad}")
    assert {"before.onnx", "after.onnx", "inputs.npz", "README.txt"} <= {p.name for p in folder.iterdir()}
    with np.load(folder / "inputs.npz") as data:
        x = data["x"]
    # shrunk: batch 1 and the smallest spatial size the model accepts
    assert x.shape == (1, 3, 1, 1), x.shape
    assert "graphopt verify" in (folder / "README.txt").read_text()
    # the saved reproducer really reproduces
    assert cli_main(["verify", str(folder / "before.onnx"), str(folder / "after.onnx"),
                     "--samples", str(folder / "inputs.npz"), "--repro-dir", str(tmp_path / "again"), "-q"]) == 1


def test_revert_restores_the_input_of_the_bad_pass(bad_passes, tmp_path, caplog):
    model = conv_model()
    with caplog.at_level(logging.WARNING, logger="graphopt"):
        out, report = graphopt.optimize(
            model, ["test-bad-drop-bias", "test-bad-flip-sign"], return_report=True,
            verify_options={"on_fail": "revert", "repro_dir": str(tmp_path)})
    assert [r.reverted for r in report.records] == [True, True]
    assert all(r.extra["verify"]["status"] == "failed" for r in report.records)
    assert "reverted" in caplog.text
    assert out.graph.SerializeToString() == Model.from_onnx(model).to_onnx().graph.SerializeToString()
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_good_pass_is_verified_and_summarized():
    _register_identity()
    try:
        out, report = graphopt.optimize(conv_model(), ["test-good-identity", "test-good-identity"],
                                        return_report=True)
        first, second = (r.extra["verify"] for r in report.records)
        assert first["status"] == "ok" and first["summary"].startswith("ok 8/8"), first
        assert len(out.graph.node) == 5
        # the second check reuses the first's "after" outputs as its "before" outputs
        assert first["model_runs"] >= 15 and second["model_runs"] == 8, (first, second)
        # token ids, a mask, an If, two outputs, symbolic dims: no false alarm either
        _, report = graphopt.optimize(transformerish(), "test-good-identity", return_report=True)
        assert report.records[0].extra["verify"]["status"] == "ok", report.records[0].extra
    finally:
        _pipeline._PASSES.pop("test-good-identity", None)


def _register_identity():
    @register_pass("test-good-identity", replace=True)
    class AddIdentity(Pass):
        """inserts an Identity before the output (changes the graph, not the numbers)"""

        contract = "exact"

        def run(self, model, ctx):
            import onnx_graphsurgeon as gs

            g = model.graph
            out = g.outputs[0]
            mid = gs.Variable(graphopt.ir.fresh_namer(g)("y_pre"), dtype=out.dtype)
            producer = out.inputs[0]
            producer.outputs = [mid]
            g.nodes.append(gs.Node("Identity", inputs=[mid], outputs=[out]))
            return PassResult(True)


# ------------------------------------------------------------------ no false alarms


def transformerish() -> onnx.ModelProto:
    """Token ids -> Gather (vocab 50), a mask, an If subgraph, two outputs, symbolic dims."""
    emb = RNG.standard_normal((50, 8)).astype(np.float32)
    then_g = h.make_graph([h.make_node("Mul", ["e", "two"], ["t_out"])], "then", [],
                          [h.make_tensor_value_info("t_out", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Neg", ["e"], ["e_out"])], "else", [],
                          [h.make_tensor_value_info("e_out", T.FLOAT, None)])
    nodes = [
        h.make_node("Gather", ["emb", "ids"], ["e"]),
        h.make_node("ReduceSum", ["e"], ["s"], keepdims=0),
        h.make_node("Greater", ["s", "zero"], ["cond"]),
        h.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        h.make_node("Cast", ["mask"], ["maskf"], to=T.FLOAT),
        h.make_node("Unsqueeze", ["maskf", "ax"], ["mask3"]),
        h.make_node("Mul", ["branch", "mask3"], ["hidden"]),
        h.make_node("ReduceMax", ["hidden"], ["pooled"], axes=[1], keepdims=0),
    ]
    inits = [nh.from_array(emb, "emb"), nh.from_array(np.array(2, np.float32), "two"),
             nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array([2], np.int64), "ax")]
    g = h.make_graph(nodes, "tx", [h.make_tensor_value_info("ids", T.INT64, ["batch", "seq"]),
                                   h.make_tensor_value_info("mask", T.INT64, ["batch", "seq"])],
                     [h.make_tensor_value_info("hidden", T.FLOAT, ["batch", "seq", 8]),
                      h.make_tensor_value_info("pooled", T.FLOAT, ["batch", 8])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_token_ids_are_bounded_by_the_gathered_dim():
    space = InputSpace.from_model(transformerish())
    spec = {s.name: s for s in space.specs}
    assert spec["ids"].int_range == (0, 50)
    m = transformerish()
    res = compare(m, Model.from_onnx(m).to_onnx(), "exact", examples=10)
    assert res.ok and not res.skipped and res.examples == 10, res.summary


def test_symbolic_dims_are_shared_between_inputs():
    m = transformerish()
    res = compare(m, m, "exact", examples=6, seed=3)
    assert res.ok and res.examples == 6


def test_user_shapes_ranges_and_samples(tmp_path):
    m = conv_model()
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    bad = conv_model()
    bad.graph.initializer[1].CopyFrom(nh.from_array(np.zeros(4, np.float32), "b"))
    res = compare(m, bad, "float", samples=[{"x": x}], examples=4)
    assert not res.ok and res.samples_used == 1 and res.counterexample["x"].shape == (2, 3, 6, 6)
    res = compare(m, bad, "float", input_shapes={"x": (1, 3, 7, 9)}, input_ranges={"x": (-1, -0.5)})
    # all-negative inputs after ReLU would hide a lot, but the bias still shows
    assert not res.ok and res.counterexample["x"].shape == (1, 3, 7, 9)
    assert res.counterexample["x"].max() <= -0.5


def test_contracts_judge_correctly():
    a = np.array([1.0, 2.0, np.nan], np.float32)
    assert check_output("o", a, a.copy(), Contract("exact")).ok
    assert not check_output("o", a, a + np.float32(1e-7) * np.array([0, 1, 0], np.float32) * 100,
                            Contract("exact")).ok
    big = np.array([1000.0, 1.0], np.float32)
    assert check_output("o", big, big + np.array([0.05, 0.05], np.float32), Contract("float", rtol=1e-4)).ok
    assert not check_output("o", big, big + np.array([0.0, 0.5], np.float32), Contract("float", rtol=1e-4)).ok
    # the default rtol (1e-6) alone accepts a few ulps; more is left to the noise floor (compare)
    assert check_output("o", big, big + np.array([0.0, 0.0005], np.float32), Contract("float")).ok
    assert not check_output("o", big, big + np.array([0.05, 0.0], np.float32), Contract("float")).ok
    ints = np.array([1, 2, 3])
    assert not check_output("o", ints, ints + np.array([0, 0, 1]), Contract("float")).ok
    logits = RNG.standard_normal((4, 10)).astype(np.float32)
    noisy = logits + 0.01 * RNG.standard_normal((4, 10)).astype(np.float32)
    c = check_output("o", logits, noisy, Contract("lossy", budget={"rel_l2": 0.05}))
    assert c.ok and 0 < c.error < 0.05
    c = check_output("o", logits, -logits, Contract("lossy", budget={"cosine": 0.9}))
    assert not c.ok and c.error == pytest.approx(-1.0)


def test_lossy_pass_budget_is_enforced(tmp_path):
    def noisy(scale):
        m = conv_model()
        w = nh.to_array(m.graph.initializer[0])
        w = w + scale * np.random.default_rng(1).standard_normal(w.shape).astype(np.float32) * np.abs(w).mean()
        m.graph.initializer[0].CopyFrom(nh.from_array(w.astype(np.float32), "w"))
        return m

    ok = compare(conv_model(), noisy(0.001), "lossy", budget={"rel_l2": 0.05})
    assert ok.ok and ok.worst.measure == "rel_l2" and 0 < ok.worst.error < 0.05
    bad = compare(conv_model(), noisy(0.5), "lossy", budget={"rel_l2": 0.05})
    assert not bad.ok and bad.worst.error > 0.05


def test_unrunnable_model_is_skipped_visibly(caplog):
    g = h.make_graph([h.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("y", T.FLOAT, [2])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1)])
    with caplog.at_level(logging.WARNING, logger="graphopt"):
        res = compare(m, m)
    assert res.skipped and "onnxruntime cannot run" in res.reason
    assert res.summary.startswith("skipped") and "skipped" in caplog.text


def test_reference_evaluator_fallback():
    from graphopt.verify.runner import Runner

    # onnxruntime rejects an IR version newer than it knows; onnx's evaluator runs it
    m = conv_model()
    m.ir_version = 99
    r = Runner(m)
    assert r.backend == "onnx-reference" and "onnxruntime cannot run" in r.note
    res = compare(m, m, "exact", examples=3)
    assert res.ok and "onnx-reference" in res.summary


@pytest.mark.parametrize("name", ["light_squeezenet.onnx", "light_shufflenet.onnx"])
def test_zoo_models_roundtrip_without_false_alarms(name):
    m = onnx.load(ZOO / name)
    res = compare(m, Model.from_onnx(m).to_onnx(), "exact", examples=3)
    assert res.ok and not res.skipped, res.summary


def _rapidocr_model(name: str) -> Path:
    path = packaged_model("rapidocr_onnxruntime", name)
    if path is None:
        pytest.skip(f"{name}: rapidocr-onnxruntime is not installed or does not ship it "
                    "(pip install rapidocr-onnxruntime)")
    return path


def test_real_pypi_model_verifies_with_its_pipeline():
    m = onnx.load(_rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    # symbolic batch and width: probing finds sizes the model accepts
    res = compare(m, Model.from_onnx(m).to_onnx(), "exact", examples=4)
    assert res.ok and not res.skipped and res.examples == 4, res.summary
    out, report = graphopt.optimize(m, "clean,fuse", return_report=True)
    for r in report.records:
        assert r.extra["verify"]["status"] in ("ok", "unchanged"), r.extra


# ------------------------------------------------------------------ the CLI


def test_cli_verify(tmp_path, capsys):
    a, same, changed = tmp_path / "a.onnx", tmp_path / "same.onnx", tmp_path / "changed.onnx"
    m = conv_model()
    onnx.save(m, a)
    onnx.save(Model.from_onnx(m).to_onnx(), same)
    m2 = conv_model()
    w = nh.to_array(m.graph.initializer[0]).copy()
    w[0, 0, 0, 0] += 1.0
    m2.graph.initializer[0].CopyFrom(nh.from_array(w, "w"))
    m2.graph.initializer[1].CopyFrom(m.graph.initializer[1])
    onnx.save(m2, changed)
    assert cli_main(["verify", str(a), str(same)]) == 0
    assert "equivalent" in capsys.readouterr().out
    repro = tmp_path / "repro"
    assert cli_main(["verify", str(a), str(changed), "--repro-dir", str(repro), "--seed", "1"]) == 1
    assert "NOT equivalent" in capsys.readouterr().out
    assert (repro / "inputs.npz").exists() and (repro / "README.txt").exists()
    # mismatched inputs: one-line error, exit 2
    other = tmp_path / "other.onnx"
    t = transformerish()
    onnx.save(t, other)
    assert cli_main(["verify", str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "different inputs" in err and len(err.strip().splitlines()) == 1
    # lossy with a budget: the changed weight is within a loose budget
    assert cli_main(["verify", str(a), str(changed), "--contract", "lossy", "--budget", "rel_l2=0.9",
                     "--repro-dir", str(repro)]) == 0


def test_instrument_reuses_snapshots():
    inst = VerifyInstrument(examples=2)
    m = conv_model()
    model = Model.from_onnx(m)
    ctx = graphopt.PassContext()
    from graphopt.pipeline import PassManager

    calls = []
    orig = Model.to_onnx

    def counting(self):
        calls.append(1)
        return orig(self)

    Model.to_onnx = counting
    try:
        PassManager(["dce", "dce", "dce"], ctx, [inst]).run(model)
    finally:
        Model.to_onnx = orig
    assert len(calls) == 1  # one snapshot; unchanged passes export nothing more


def test_shrinking_finds_the_minimal_failing_size():
    """B ignores columns past the 5th: only inputs wider than 5 show it. Hypothesis must
    find one and shrink it to width exactly 6 and batch 1."""

    def model(end: int) -> onnx.ModelProto:
        nodes = [h.make_node("Slice", ["x", "s", "e", "a"], ["xs"]),
                 h.make_node("ReduceSum", ["xs", "a"], ["y"], keepdims=1)]
        inits = [nh.from_array(np.array([0], np.int64), "s"), nh.from_array(np.array([end], np.int64), "e"),
                 nh.from_array(np.array([1], np.int64), "a")]
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", "W"])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 1])], inits)
        return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])

    res = compare(model(1000), model(5), "float", examples=50, seed=0, input_ranges={"x": (1, 2)})
    assert not res.ok
    assert res.counterexample["x"].shape == (1, 6), res.counterexample["x"].shape
    assert res.shrunk
    # bounded: with no time for shrinking, the first failing input is reported as is
    quick = compare(model(1000), model(5), "float", examples=50, seed=0, input_ranges={"x": (1, 2)},
                    shrink_seconds=0.0)
    assert not quick.ok and quick.counterexample["x"].shape[1] >= 6 and quick.seconds < res.seconds + 1


@pytest.mark.parametrize("name", ["tiny_transformer.onnx", "digits_cnn.onnx"])
def test_shipped_models_verify_without_false_alarms(name):
    path = Path(__file__).resolve().parent.parent / "models" / name
    if not path.exists():
        pytest.skip(f"models/{name} not generated yet")
    m = onnx.load(path)
    res = compare(m, Model.from_onnx(m).to_onnx(), "exact", examples=4)
    assert res.ok and not res.skipped and res.examples == 4, res.summary


def test_cli_run_exits_1_on_a_failed_check(tmp_path, monkeypatch, capsys):
    (tmp_path / "badplugin_verify_test.py").write_text(
        "import graphopt\n"
        "from graphopt import Pass, PassResult, register_pass\n"
        "@register_pass('test-plugin-negate', replace=True)\n"
        "class Negate(Pass):\n"
        "    '''negates the conv weight'''\n"
        "    contract = 'float'\n"
        "    def run(self, model, ctx):\n"
        "        w = next(n for n in model.graph.nodes if n.op == 'Conv').inputs[1]\n"
        "        w.values = -w.values\n"
        "        return PassResult(True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(), src)
    try:
        rc = cli_main([str(src), "-p", "test-plugin-negate", "--plugin", "badplugin_verify_test",
                       "--repro-dir", str(tmp_path / "repro"), "-o", str(tmp_path / "out.onnx")])
        assert rc == 1
        assert not (tmp_path / "out.onnx").exists()
        assert "test-plugin-negate" in capsys.readouterr().err
        (folder,) = (tmp_path / "repro").glob("*-01-test-plugin-negate")
        assert (folder / "inputs.npz").exists()
        rc = cli_main([str(src), "-p", "test-plugin-negate", "--plugin", "badplugin_verify_test",
                       "--on-fail", "revert", "--repro-dir", str(tmp_path / "repro2"),
                       "-o", str(tmp_path / "out.onnx")])
        assert rc == 0 and "reverted" in capsys.readouterr().out
    finally:
        _pipeline._PASSES.pop("test-plugin-negate", None)


def test_random_models_are_skipped_not_failed(caplog):
    g = h.make_graph([h.make_node("RandomNormalLike", ["x"], ["r"]), h.make_node("Add", ["x", "r"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 3])], [h.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    with caplog.at_level(logging.WARNING, logger="graphopt"):
        res = compare(m, m)
    assert res.skipped and "different outputs on the same input" in res.reason
    assert "skipped" in caplog.text


def _fold_bn(proto: onnx.ModelProto, drop_bias_of: int | None = None) -> onnx.ModelProto:
    """A plain Conv-BN fold (what a `fuse` pass does), to check the float defaults."""
    import onnx_graphsurgeon as gs

    model = Model.from_onnx(proto)
    g = model.graph
    folded = 0
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        x = bn.inputs[0]
        if len(x.inputs) != 1 or x.inputs[0].op != "Conv" or len(x.outputs) != 1:
            continue
        conv = x.inputs[0]
        gamma, beta, mean, var = (const_value(t).astype(np.float64) for t in bn.inputs[1:5])
        scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        w = const_value(conv.inputs[1]).astype(np.float64)
        b = const_value(conv.inputs[2]).astype(np.float64) if len(conv.inputs) > 2 else 0.0
        new_b = (b - mean) * scale + beta
        if drop_bias_of == folded:
            new_b = np.zeros_like(new_b)
        wname = conv.inputs[1].name
        while len(conv.inputs) > 1:
            del conv.inputs[-1]
        conv.inputs.append(gs.Constant(wname + "_f", (w * scale[:, None, None, None]).astype(np.float32)))
        conv.inputs.append(gs.Constant(wname + "_bias_f", new_b.astype(np.float32)))
        y = bn.outputs[0]
        bn.outputs.clear()
        conv.outputs[0] = y
        folded += 1
    g.cleanup()
    assert folded > 10
    return model.to_onnx()


def test_float_defaults_pass_conv_bn_folding_but_catch_a_dropped_bias():
    from graphopt.testing import archs

    m = archs.resnet50(batch="N", image=64, width=0.5)
    good = compare(m, _fold_bn(m), "float", examples=4)
    assert good.ok and not good.skipped, good.summary
    assert good.worst.error <= good.worst.tolerance  # within a few ulps or within the input's float noise
    bad = compare(m, _fold_bn(m, drop_bias_of=20), "float", examples=4)
    assert not bad.ok, bad.summary


# ------------------------------------------------------------ samples, lossy, scheduling


def _clipped(lo: float, hi: float) -> onnx.ModelProto:
    """conv_model with its input clipped to [lo, hi]: the same numbers on inputs inside
    the range (like INT8 with a calibrated range), far off outside it."""
    m = conv_model()
    clip = h.make_node("Clip", ["x", "clip_lo", "clip_hi"], ["x_clipped"], name="clip")
    m.graph.node[0].input[0] = "x_clipped"
    m.graph.node.insert(0, clip)
    m.graph.initializer.extend([nh.from_array(np.array(lo, np.float32), "clip_lo"),
                                nh.from_array(np.array(hi, np.float32), "clip_hi")])
    return m


def test_lossy_budget_is_judged_on_real_samples_only():
    samples = [{"x": np.random.default_rng(i).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for i in range(3)]
    a, b = conv_model(), _clipped(0.0, 1.0)
    # random draws (normal, large, negative...) fall outside the clip range: a lossy
    # budget judged on them fails spuriously
    drawn = compare(a, b, "lossy", budget={"rel_l2": 0.05}, examples=8)
    assert not drawn.ok and drawn.worst.error > 0.05
    # with real samples, the budget is judged on them alone
    res = compare(a, b, "lossy", budget={"rel_l2": 0.05}, examples=8, samples=samples)
    assert res.ok and res.examples == 3 and res.samples_used == 3, res.summary
    assert any("real sample" in n for n in res.notes)
    # ...and still catches a pass that is wrong on them
    bad = compare(a, _clipped(0.0, 0.5), "lossy", budget={"rel_l2": 0.05}, examples=8, samples=samples)
    assert not bad.ok and bad.counterexample_text.startswith("real sample") and bad.worst.error > 0.05
    # exact/float contracts: samples first, then random draws (which catch the clip)
    flt = compare(a, b, "float", examples=8, samples=samples)
    assert not flt.ok and flt.samples_used == 3 and not flt.counterexample_text.startswith("real sample")
    assert flt.counterexample["x"].shape == (1, 3, 1, 1)  # a drawn input, shrunk


def test_lossy_pass_in_a_pipeline_is_judged_on_the_context_samples(tmp_path):
    @register_pass("test-lossy-clip", replace=True)
    class ClipInput(Pass):
        """clips the input to [0, 1] (a stand-in for a calibrated INT8 pass)"""

        contract = "lossy"
        budget = {"rel_l2": 0.05}

        def run(self, model, ctx):
            model.replace_with(Model.from_onnx(_clipped(0.0, 1.0)))
            return PassResult(True)

    samples = [{"x": np.random.default_rng(i).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for i in range(2)]
    try:
        for background in (True, False):
            opts = {"repro_dir": str(tmp_path), "background": background}
            _, report = graphopt.optimize(conv_model(), "test-lossy-clip", samples=samples,
                                          verify_options=opts, return_report=True)
            v = report.records[0].extra["verify"]
            assert v["status"] == "ok" and v["examples"] == 2 and v["samples"] == 2, v
            with pytest.raises(VerificationError, match="test-lossy-clip"):
                graphopt.optimize(conv_model(), "test-lossy-clip", verify_options=opts)
    finally:
        _pipeline._PASSES.pop("test-lossy-clip", None)


def test_draws_are_seeded_and_start_simple():
    space = InputSpace.from_model(conv_model())
    one, again = space.draw(6, seed=3), space.draw(9, seed=3)
    assert [e.same_as(f) for e, f in zip(one, again)] == [True] * 6   # a prefix of a longer draw
    assert not one[1].same_as(space.draw(6, seed=4)[1])
    assert one[0].recipe["x"] == ("normal", 0) and set(one[0].dims.values()) == {1}
    assert one[1].dims == {k: hi for k, (_, hi) in space.dim_ranges.items()}
    assert len({e.recipe["x"] for e in one}) == 6


def test_background_and_inline_checks_agree(bad_passes, tmp_path):
    _register_identity()
    try:
        seen = []
        for background in (True, False):
            _, report = graphopt.optimize(conv_model(), ["test-good-identity", "dce", "test-good-identity"],
                                          verify_options={"background": background}, return_report=True)
            seen.append([(r.extra["verify"]["status"], r.extra["verify"]["summary"],
                          r.extra["verify"].get("model_runs")) for r in report.records])
            # a failure in the middle names the failing pass; nothing is returned
            with pytest.raises(VerificationError, match="test-bad-flip-sign") as e:
                graphopt.optimize(conv_model(), ["test-good-identity", "test-bad-flip-sign", "test-good-identity"],
                                  verify_options={"background": background, "repro_dir": str(tmp_path / str(background))})
            assert "x[1, 3, 1, 1]" in str(e.value)  # shrunk
        assert seen[0] == seen[1], seen
        assert seen[0][0][2] >= 15 and seen[0][2][2] == 8
    finally:
        _pipeline._PASSES.pop("test-good-identity", None)


def test_models_without_random_ops_skip_the_determinism_rerun():
    from graphopt.verify.probe import may_be_random

    assert not may_be_random(conv_model()) and not may_be_random(transformerish())
    g = h.make_graph([h.make_node("RandomNormalLike", ["x"], ["r"]), h.make_node("Add", ["x", "r"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 3])], [h.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    assert may_be_random(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    res = compare(conv_model(), conv_model(), "exact", examples=8)
    assert res.ok and res.model_runs == 16, res.model_runs  # 8 examples x 2 models, the probe is example 1


# ------------------------------------------------------------------ float noise floor


def test_noise_floor_perturbs_weights_but_not_shape_like_vectors():
    from graphopt.verify.noise import MIN_ELEMENTS, perturb_weights

    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    scales = np.array([1, 1, 2, 2], np.float32)
    g = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         h.make_node("Resize", ["c", "", "scales"], ["y"], mode="nearest")],
        "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 4, 4])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 8, 8])],
        [nh.from_array(w, "w"), nh.from_array(scales, "scales")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    p = perturb_weights(m)
    got = {t.name: nh.to_array(t) for t in p.graph.initializer}
    assert scales.size < MIN_ELEMENTS and np.array_equal(got["scales"], scales)
    rel = np.abs(got["w"].astype(np.float64) - w) / np.abs(w)
    assert 0 < rel.max() <= 2 * np.finfo(np.float32).eps and (got["w"] != w).any()  # eps, then rounded
    assert nh.to_array(m.graph.initializer[0]).tobytes() == w.tobytes()  # the input is untouched


def test_noise_floor_spares_rounding_on_ill_conditioned_inputs_but_not_bugs():
    """PP-OCRv4's detector after fold-bn, on a large-magnitude input: the outputs move
    by more than the float tolerance (huge activations cancel before the Sigmoid), and
    by less than rounding the weights by one ulp moves them -- no bug. A real bug on
    the same input still fails."""
    from graphopt.verify.contracts import Contract, check_output

    det = onnx.load(_rapidocr_model("ch_PP-OCRv4_det_infer.onnx"))
    folded = graphopt.optimize(det, "fold-bn", verify=False)
    x = {"x": (np.random.default_rng(1).standard_normal((1, 3, 64, 64)) * 1000).astype(np.float32)}
    a, b = run_ort(det, x)[0], run_ort(folded, x)[0]
    assert not check_output("y", a, b, Contract("float")).ok  # the plain tolerance alone: a false alarm
    res = compare(det, folded, "float", samples=[x], examples=1)
    assert res.ok and any("float noise" in n for n in res.notes), (res.summary, res.notes)
    # a swapped pair of output channels in one convolution: a bug, on the same input
    buggy = onnx.ModelProto()
    buggy.CopyFrom(folded)
    inits = {t.name: t for t in buggy.graph.initializer}
    convs = [n for n in buggy.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    t = inits[convs[len(convs) // 2].input[1]]
    w = nh.to_array(t).copy()
    w[[0, 1]] = w[[1, 0]]
    t.CopyFrom(nh.from_array(w, t.name))
    res = compare(folded, buggy, "float", samples=[x], examples=1, shrink_seconds=0)
    assert not res.ok, res.summary


def test_real_pypi_detector_verifies_with_its_pipeline():
    """The default job on PP-OCRv4's detector: no false alarm (drawn inputs include
    large magnitudes, where fold-bn's rounding exceeds the plain tolerance)."""
    det = onnx.load(_rapidocr_model("ch_PP-OCRv4_det_infer.onnx"))
    _, report = graphopt.optimize(det, "clean,fuse", return_report=True)
    checked = [r.extra["verify"] for r in report.records if r.changed]
    assert checked and all(v["status"] == "ok" for v in checked), checked


def test_lossy_metrics_do_not_divide_by_an_output_that_is_zero_within_atol():
    """PP-OCRv4's detector on a 1x1 image: every float32 probability underflows to 0,
    the float16 model leaves one at 3e-8. Relative to an all-zero reference that is an
    infinite error; it is no error at all. A real difference still counts."""
    from graphopt.verify.contracts import Contract, check_output

    a = np.zeros((1, 1, 32, 32), np.float32)
    b = a.copy()
    b[0, 0, 3, 4] = 3e-8
    for budget in ({"rel_l2": 0.01}, {"cosine": 0.99}):
        assert check_output("y", a, b, Contract("lossy", budget=budget)).ok, budget
        b2 = a.copy()
        b2[0, 0, 3, 4] = 0.5
        assert not check_output("y", a, b2, Contract("lossy", budget=budget)).ok, budget
    # small but real outputs keep their relative measure
    a = np.full((64,), 1e-3, np.float32)
    assert not check_output("y", a, a * 1.5, Contract("lossy", budget={"rel_l2": 0.05})).ok


def test_top1_counts_any_maximum_of_a_tied_reference_row():
    from graphopt.verify.contracts import top1_agreement

    a = np.array([[0.0, 0.0, 0.0], [0.1, 0.7, 0.2], [0.5, 0.5, 0.0]], np.float32)
    b = np.array([[0.0, 1e-8, 0.0], [0.1, 0.2, 0.7], [0.4, 0.6, 0.0]], np.float32)
    assert top1_agreement(a, b) == (2, 3)  # rows 0 and 2 tie in the reference; row 1 disagrees


# ------------------------------------------------ issue 13: a verifier without blind spots


def _node_case(module: str, name: str):
    """A model of onnx's node conformance tests, made by onnx's own generator."""
    importlib.import_module(f"onnx.backend.test.case.node.{module}")
    from onnx.backend.test.case.node import _NodeTestCases

    return next(c for c in _NodeTestCases if c.name == name)


def _if_model(direct: bool) -> onnx.ModelProto:
    """cond (bool scalar), x -> If(cond: Identity(x) * 1 ... ). With `direct`, the then
    branch returns the outer-scope x itself: onnxruntime refuses that model, onnx's
    reference evaluator runs it."""
    then_nodes = [] if direct else [h.make_node("Identity", ["x"], ["t_out"])]
    then_g = h.make_graph(then_nodes, "then", [], [h.make_tensor_value_info("x" if direct else "t_out", T.FLOAT, [4])])
    else_g = h.make_graph([h.make_node("Neg", ["x"], ["e_out"])], "else", [],
                         [h.make_tensor_value_info("e_out", T.FLOAT, [4])])
    g = h.make_graph([h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                     [h.make_tensor_value_info("cond", T.BOOL, []), h.make_tensor_value_info("x", T.FLOAT, [4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [4])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_a_model_onnxruntime_refuses_after_a_pass_fails_verification(tmp_path):
    """Before: compare fell back to onnx's reference evaluator for the second model
    and said 'ok'."""
    from onnx.reference import ReferenceEvaluator

    good, broken = _if_model(direct=False), _if_model(direct=True)
    run_ort(good, {"cond": np.array(True), "x": np.ones(4, np.float32)})
    with pytest.raises(Exception):
        run_ort(broken, {"cond": np.array(True), "x": np.ones(4, np.float32)})
    ReferenceEvaluator(broken).run(None, {"cond": np.array(True), "x": np.ones(4, np.float32)})  # it runs
    res = compare(good, broken, "exact")
    assert not res.ok and not res.skipped and res.worst.measure == "rejected", res.summary
    assert "onnxruntime rejects the second model" in res.message()
    # the same through `graphopt verify` (one verifier) and through a pipeline pass
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(good, a)
    onnx.save(broken, b)
    assert cli_main(["verify", str(a), str(b), "-q", "--repro-dir", str(tmp_path / "r")]) == 1

    @register_pass("test-bad-unload", replace=True)
    class ReturnOuterDirectly(Pass):
        """replaces the If node's then branch by one returning the outer x directly"""

        contract = "exact"

        def run(self, model, ctx):
            model.replace_with(Model.from_onnx(broken))
            return PassResult(True)

    try:
        with pytest.raises(VerificationError) as e:
            graphopt.optimize(good, "test-bad-unload", verify_options={"repro_dir": str(tmp_path)})
        assert "pass 'test-bad-unload' made the model unloadable" in str(e.value)
        assert "is an outer scope value being returned directly" in str(e.value)
    finally:
        _pipeline._PASSES.pop("test-bad-unload", None)


def test_unloadable_before_still_uses_the_reference_evaluator():
    broken = _if_model(direct=True)
    res = compare(broken, broken, "exact", examples=3)
    assert res.ok and not res.skipped and res.backend == "onnx-reference", res.summary
    assert any("onnxruntime cannot run" in n for n in res.notes)


@pytest.mark.parametrize("module,name", [("if_", "test_if"), ("loop", "test_loop11"), ("if_", "test_if_seq"),
                                         ("if_", "test_if_opt")])
def test_models_with_a_bool_condition_input_are_verified(module, name):
    """Before: bool inputs were drawn as numpy.bool scalars, which onnxruntime refuses:
    'found no input the model accepts'."""
    case = _node_case(module, name)
    res = compare(case.model, case.model, "exact", examples=4)
    assert res.ok and not res.skipped and res.examples == 4 and res.backend == "onnxruntime", res.summary
    space = InputSpace.from_model(case.model)
    for ex in space.draw(4, 0):
        for s in space.specs:
            if s.kind == "bool":
                v = ex.feeds[s.name]
                assert isinstance(v, np.ndarray) and v.dtype == bool and v.shape == space.shapes_for(ex.dims)[s.name]


def test_a_changed_branch_of_if_is_caught():
    case = _node_case("if_", "test_if")
    changed = onnx.ModelProto()
    changed.CopyFrom(case.model)
    branch = next(a for a in changed.graph.node[0].attribute if a.name == "else_branch").g
    for n in branch.node:
        for a in n.attribute:
            if a.name == "value":
                v = nh.to_array(a.t).copy()
                v.reshape(-1)[0] += 1
                a.t.CopyFrom(nh.from_array(v, a.t.name))
    res = compare(case.model, changed, "float", examples=8, shrink_seconds=0)
    assert not res.ok, res.summary


def _cast_model(to: int, opset: int, neg: bool = False) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Neg" if neg else "Identity", ["x"], ["x1"]),
                      h.make_node("Cast", ["x1"], ["y"], to=to), h.make_node("Cast", ["y"], ["f"], to=T.FLOAT)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 5])],
                     [h.make_tensor_value_info("y", to, ["N", 5]), h.make_tensor_value_info("f", T.FLOAT, ["N", 5])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("to,opset", [(T.BFLOAT16, 19), (T.FLOAT8E4M3FN, 19), (T.INT4, 21)])
def test_bfloat16_float8_int4_outputs_and_inputs_are_compared(to, opset):
    """Before: onnxruntime's Python API cannot give or take these types ('No
    corresponding Numpy type'), so nothing was verified; ml_dtypes inputs crashed the
    run cache ('cannot include dtype 'E' in a buffer')."""
    m = _cast_model(to, opset)
    res = compare(m, m, "float", examples=4)
    assert res.ok and not res.skipped and res.examples == 4 and res.backend == "onnxruntime", res.summary
    # the narrow-typed value as a graph input too
    g = h.make_graph([h.make_node("Cast", ["n"], ["f"], to=T.FLOAT)], "g",
                     [h.make_tensor_value_info("n", to, [3, 4])], [h.make_tensor_value_info("f", T.FLOAT, [3, 4])])
    mi = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    res = compare(mi, mi, "exact", examples=3)
    assert res.ok and not res.skipped and res.examples == 3, res.summary
    # and a real difference in a bfloat16 output is seen
    if to == T.BFLOAT16:
        res = compare(m, _cast_model(to, opset, neg=True), "float", examples=4, shrink_seconds=0)
        assert not res.ok and res.worst.name == "y", res.summary


def test_runner_cache_takes_any_dtype_and_sequences():
    import ml_dtypes

    from graphopt.verify.runner import _digest

    x = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    assert _digest({"x": x}) == _digest({"x": x.copy()}) != _digest({"x": (x + 1).astype(ml_dtypes.bfloat16)})
    assert _digest({"s": [np.ones(2, np.float32), np.zeros(3, np.float32)], "o": None, "b": np.array(True)})


def _seq_model(delta: float) -> onnx.ModelProto:
    """x[2], z[3] -> a sequence output [x + delta, z] (elements of different shapes)."""
    g = h.make_graph([h.make_node("Add", ["x", "d"], ["x2"]),
                      h.make_node("SequenceConstruct", ["x2", "z"], ["s"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2]), h.make_tensor_value_info("z", T.FLOAT, [3])],
                     [h.make_tensor_sequence_value_info("s", T.FLOAT, None)],
                     [nh.from_array(np.array(delta, np.float32), "d")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_sequence_outputs_are_compared_element_by_element():
    """Before: a sequence of tensors of different shapes crashed the comparison."""
    res = compare(_seq_model(0.0), _seq_model(0.0), "float", examples=3)
    assert res.ok and not res.skipped, res.summary
    res = compare(_seq_model(0.0), _seq_model(0.5), "float", examples=3, shrink_seconds=0)
    assert not res.ok and res.worst.name == "s[0]", res.summary


def test_optional_and_sequence_node_tests_do_not_crash():
    for module, name in [("if_", "test_if_opt"), ("if_", "test_if_seq"), ("loop", "test_loop13_seq")]:
        case = _node_case(module, name)
        res = compare(case.model, case.model, "float", examples=2)
        assert res.ok, (name, res.summary)


def test_an_input_too_large_to_draw_is_named(tmp_path, capsys):
    """Before: 'found no input the model accepts ()', an empty reason."""
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 2**40])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 2**40])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    res = compare(m, m)
    assert res.skipped and "input 'x' needs 2**40 elements" in res.reason, res.reason
    p = tmp_path / "big.onnx"
    onnx.save(m, p)
    assert cli_main(["verify", str(p), str(p)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "input 'x' needs 2**40 elements" in out[0], out


def test_reproducer_folders_of_later_runs_do_not_overwrite_earlier_ones(bad_passes, tmp_path):
    """Before: every run numbered its folders from 01, so the next failing run
    overwrote graphopt-repro/01-<pass>."""
    folders = []
    for bad in ("drop-bias", "flip-sign"):
        with pytest.raises(VerificationError):
            graphopt.optimize(conv_model(), f"test-bad-{bad}",
                              verify_options={"repro_dir": str(tmp_path), "shrink_seconds": 0})
    folders = sorted(tmp_path.iterdir())
    assert len(folders) == 2, folders
    readmes = {f.name: (f / "README.txt").read_text() for f in folders}
    assert any("drop-bias" in t for t in readmes.values()) and any("flip-sign" in t for t in readmes.values())
    # the same pass failing twice: two folders
    for _ in range(2):
        with pytest.raises(VerificationError):
            graphopt.optimize(conv_model(), "test-bad-drop-bias",
                              verify_options={"repro_dir": str(tmp_path / "same"), "shrink_seconds": 0})
    assert len(list((tmp_path / "same").iterdir())) == 2


def test_an_error_on_the_ahead_thread_surfaces_once_without_a_thread_traceback(monkeypatch):
    """A sample lacking an input, given to the instrument directly (graphopt.optimize
    validates samples before this point): before, the verify-ahead thread printed its
    own traceback before the pipeline's error."""
    import threading

    from graphopt.pipeline import PassContext, PassManager
    from graphopt.errors import GraphoptError

    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    ctx = PassContext(samples=[{"not_x": np.ones((1, 3, 4, 4), np.float32)}])
    with pytest.raises(GraphoptError, match="lacks input 'x'"):
        PassManager("test-good-identity" if False else "fold-bn", ctx, [VerifyInstrument()]).run(
            Model.from_onnx(_bn_model()))
    assert seen == []


def _bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"])]
    inits = [nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")] + [
        nh.from_array(a.astype(np.float32), n) for n, a in
        (("s", rng.uniform(0.5, 2, 4)), ("bb", rng.standard_normal(4)), ("m", rng.standard_normal(4)),
         ("v", rng.uniform(0.5, 2, 4)))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, "H", "W"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 4, "H", "W"])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


# ------------------------------------------------ power: noise-calibrated in both directions


def _power():
    import sys

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    import bench_verify_power

    return bench_verify_power


@pytest.mark.parametrize("model_name,kind,seed", [
    ("digits_cnn", "nudge-0.05%", 1),            # a shipped classifier: change 1.4e-5
    ("arch_mobilenet_v3_small", "nudge-5%", 0),  # small logits (max ~0.03-0.2): atol must not hide 2e-5
    ("arch_resnet50_w0.5", "nudge-0.5%", 1),     # change 4.7e-5
    ("arch_bert_2x128", "nudge-5%", 1),           # change 1.1e-5
])
def test_small_real_changes_are_caught(model_name, kind, seed):
    """One weight moved by a fraction of its tensor's range: an output change of 1e-5 to
    1e-4 of the output's magnitude, which the former fixed rtol of 1e-4 called
    equivalent (checked here: with --rtol 1e-4 it still passes)."""
    B = _power()
    model = B.load(B.find_models([model_name])[model_name])
    mutant = B.mutate(model, kind, seed)
    ref = graphopt.verify.Runner(model, threads=B.THREADS)   # the mutant runs with the same thread count
    from graphopt.verify.compare import make_space

    space = make_space(model, ref)
    change = B.output_change(model, mutant, space, 8, 0, ref)
    assert 1e-5 <= change < 1e-4, change   # the band the old contract could not see
    assert compare(model, mutant, "float", rtol=1e-4, shrink_seconds=0, runner_a=ref, space=space,
                   threads=B.THREADS).ok
    res = compare(model, mutant, "float", shrink_seconds=0, runner_a=ref, space=space, threads=B.THREADS)
    assert not res.ok and not res.skipped, (change, res.summary)
    assert "times this input's float noise" in res.worst.detail


@pytest.mark.parametrize("model_name", ["arch_mobilenet_v3_small", "arch_bert_2x128", "tiny_transformer"])
def test_legitimate_rewrites_pass_the_calibrated_contract(model_name):
    """onnxsim's output, onnxruntime's saved EXTENDED graph (fusions: LayerNorm, GELU,
    attention, Conv+BN...) and graphopt's clean,fuse (each float pass checked inside the
    pipeline) -- all within a few ulps or within their input's float noise."""
    B = _power()
    model = B.load(B.find_models([model_name])[model_name])
    rewrites = B.legit_rewrites(model, None)
    out, said = B.graphopt_rewrite(model, None, 8)
    assert out is not None, said          # no false alarm inside the pipeline either
    rewrites["graphopt"] = out
    for tool, rewritten in rewrites.items():
        assert not isinstance(rewritten, str), (tool, rewritten)
        res = compare(model, rewritten, "float", shrink_seconds=0)
        assert res.ok and not res.skipped and res.examples == 8, (tool, res.summary)


def test_a_model_with_nothing_to_perturb_is_judged_without_a_floor_and_says_so():
    """Tiny inputs and no weights: no float noise can be measured, so an output past the
    few-ulp bound is judged at the fixed rtol 1e-4 (with a note), not failed against a
    zero floor."""
    def model(simplified: bool) -> onnx.ModelProto:
        # (x + y) - x vs y: a legitimate algebraic rewrite, exact in reals, not in floats
        nodes = ([h.make_node("Identity", ["y"], ["o"])] if simplified else
                 [h.make_node("Add", ["x", "y"], ["t"]), h.make_node("Sub", ["t", "x"], ["o"])])
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, T.FLOAT, [4]) for n in "xy"],
                         [h.make_tensor_value_info("o", T.FLOAT, [4])])
        return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])

    feeds = {"x": np.full(4, 100.0, np.float32), "y": np.full(4, 0.3, np.float32)}
    res = compare(model(False), model(True), "float", samples=[feeds], examples=1)
    assert res.ok and 1e-6 < res.worst.error / res.worst.scale < 1e-4, res.summary
    assert any("fixed rtol 0.0001" in n and "16+ values" in n for n in res.notes), res.notes


def test_another_runtimes_runner_is_judged_at_the_fixed_rtol_with_a_note():
    """A caller's runner for another runtime (TVM, OpenVINO): different kernels, so the
    few-ulp bound of one-runtime rewrites does not apply (codegen passes no rtol)."""
    from graphopt.verify.runner import Runner

    m = conv_model()

    class OtherRuntime:
        backend, note, runs = "other", "", 0

        def __init__(self):
            self.inner = Runner(m)

        def run(self, feeds, cache=True):
            outs = self.inner.run(feeds, cache=cache)
            return [o * np.float32(1 + 2e-5) for o in outs]   # kernels that round differently

    res = compare(m, m, "float", runner_b=OtherRuntime(), shrink_seconds=0)
    assert res.ok and res.contract.rtol == 1e-4 and any("other vs onnxruntime" in n for n in res.notes), res.summary
    res = compare(m, m, "float", rtol=1e-6, runner_b=OtherRuntime(), shrink_seconds=0)   # chosen: kept
    assert not res.ok, res.summary
