"""graphopt.analysis: MAC/FLOP counts against hand-computed values, memory, latency, profile CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import GraphoptError
from graphopt.analysis import count_macs, count_params, estimate_activation_memory
from graphopt.cli import main as cli_main

from conftest import MODELS, ZOO, run_ort


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def test_conv_groups_strides_dilation():
    # X [1, 8, 17, 17], W [16, 8/4, 3, 3], groups 4, stride 2, dilation 2, pads 1.
    # Effective kernel 2*(3-1)+1 = 5; out = floor((17 + 2 - 5) / 2) + 1 = 8.
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=4, strides=[2, 2],
                            dilations=[2, 2], pads=[1, 1, 1, 1], name="conv")
    relu = helper.make_node("Relu", ["y"], ["z"], name="relu")
    m = _model([node, relu], [_f("x", ["N", 8, 17, 17])], [_f("z", None)],
               [_w("w", (16, 2, 3, 3)), _w("b", (16,))])
    c = count_macs(m, {"x": (1, 8, 17, 17)})
    expected = (1 * 16 * 8 * 8) * (8 // 4) * 3 * 3  # output elements x (Cin/groups * k*k)
    assert c.per_node["conv"] == expected == 18432
    assert c.flops_per_node["conv"] == 2 * expected
    assert c.flops_per_node["relu"] == 16 * 8 * 8
    assert c.total == expected and c.flops == 2 * expected + 1024
    assert c.per_op_type == {"Conv": expected, "Relu": 0}
    # the batch dim scales everything linearly
    assert count_macs(m, batch=3).total == 3 * expected
    # and the output shape we assumed is what onnxruntime computes
    y = run_ort(m, {"x": np.zeros((1, 8, 17, 17), np.float32)})[0]
    assert y.shape == (1, 16, 8, 8)


def test_depthwise_and_conv_transpose():
    dw = helper.make_node("Conv", ["x", "wd"], ["y"], group=6, kernel_shape=[3, 3], pads=[1] * 4,
                          name="dw")
    # ConvTranspose W [Cin=6, Cout=3, 3, 3], stride 2: each input element feeds 3*3*3 outputs
    ct = helper.make_node("ConvTranspose", ["y", "wt"], ["z"], strides=[2, 2], name="up")
    m = _model([dw, ct], [_f("x", [1, 6, 5, 5])], [_f("z", None)],
               [_w("wd", (6, 1, 3, 3)), _w("wt", (6, 3, 3, 3))])
    c = count_macs(m)
    assert c.per_node["dw"] == 6 * 5 * 5 * 1 * 9
    assert c.per_node["up"] == (6 * 5 * 5) * 3 * 9
    assert c.per_op_type["ConvTranspose"] == 4050


def test_gemm_transposes_and_matmul_batch_broadcast():
    gemm = helper.make_node("Gemm", ["a", "b", "c"], ["g"], transA=1, transB=1, name="gemm")
    # MatMul [2,1,5,6] x [3,6,7] -> broadcast batch [2,3]: 6 matrices of 5x7 with K=6
    mm = helper.make_node("MatMul", ["p", "q"], ["r"], name="mm")
    # 1-D left operand: [6] x [2,6,7] -> [2,7], K=6
    mv = helper.make_node("MatMul", ["v", "q2"], ["s"], name="vec")
    m = _model(
        [gemm, mm, mv],
        [_f("a", [32, 4]), _f("p", [2, 1, 5, 6]), _f("q", [3, 6, 7]), _f("v", [6]), _f("q2", [2, 6, 7])],
        [_f("g", None), _f("r", None), _f("s", None)],
        [_w("b", (16, 32)), _w("c", (16,))],
    )
    c = count_macs(m)
    assert c.per_node["gemm"] == 4 * 16 * 32  # M=4 (A is [K, M] transposed), N=16, K=32
    assert c.per_node["mm"] == 2 * 3 * 5 * 7 * 6
    assert c.per_node["vec"] == 2 * 7 * 6
    assert c.per_op_type["MatMul"] == 1260 + 84
    outs = run_ort(m, {"a": np.zeros((32, 4), np.float32), "p": np.zeros((2, 1, 5, 6), np.float32),
                       "q": np.zeros((3, 6, 7), np.float32), "v": np.zeros(6, np.float32),
                       "q2": np.zeros((2, 6, 7), np.float32)})
    assert [o.shape for o in outs] == [(4, 16), (2, 3, 5, 7), (2, 7)]


def test_attention_matmuls_symbolic_dims():
    # scores = Q K^T over [batch, heads, seq, d]; the dims are bound by name
    t = helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])
    s = helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk")
    sm = helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax")
    o = helper.make_node("MatMul", ["p", "v"], ["o"], name="pv")
    shape = ["B", 4, "S", 16]
    m = _model([t, s, sm, o], [_f("q", shape), _f("k", shape), _f("v", shape)], [_f("o", None)])
    c = count_macs(m, dims={"B": 2, "S": 10})
    assert c.per_node["qk"] == 2 * 4 * 10 * 10 * 16
    assert c.per_node["pv"] == 2 * 4 * 10 * 16 * 10
    assert c.flops_per_node["softmax"] == 5 * 2 * 4 * 10 * 10
    with pytest.raises(GraphoptError, match="unbound dim 'S'"):
        count_macs(m, dims={"B": 2})


def test_lstm_and_pooling():
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4, name="lstm")
    m = _model([lstm], [_f("x", [5, 2, 3])], [_f("y", None)],
               [_w("w", (1, 16, 3)), _w("r", (1, 16, 4))])
    assert count_macs(m).per_node["lstm"] == 5 * 2 * (16 * 3 + 16 * 4)
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], name="p")
    m = _model([pool], [_f("x", [1, 2, 9, 9])], [_f("y", None)])
    c = count_macs(m)
    assert c.total == 0 and c.flops_per_node["p"] == 2 * 4 * 4 * 9


def test_bad_bindings_are_clear_errors():
    node = helper.make_node("Relu", ["x"], ["y"])
    m = _model([node], [_f("x", ["N", 3])], [_f("y", None)])
    with pytest.raises(GraphoptError, match="not an input"):
        count_macs(m, {"nope": (1, 3)})
    with pytest.raises(GraphoptError, match="fixed dim 1 = 3"):
        count_macs(m, {"x": (1, 4)})
    with pytest.raises(GraphoptError, match="rank"):
        count_macs(m, {"x": (1, 3, 1)})


def test_resnet50_total_matches_published():
    """ResNet-50 at 224x224 is ~4.09 GMACs (torchvision's 4.09 "GFLOPS" are MACs)."""
    from graphopt.testing.archs import resnet50

    c = count_macs(resnet50(batch="N"), batch=1)
    assert 4.08e9 < c.total < 4.10e9
    assert c.per_op_type["Conv"] + c.per_op_type["Gemm"] == c.total
    assert c.per_op_type["Gemm"] == 2048 * 1000
    zoo = count_macs(onnx.load(ZOO / "light_resnet50.onnx"))
    assert zoo.total == c.total  # the zoo's real topology agrees with our builder


def test_transformer_counts():
    m = onnx.load(MODELS / "tiny_transformer.onnx")
    c = count_macs(m, {"input_ids": (1, 16)})
    # per layer: QKV 3*16*64*64, scores and context 2*(4 heads*16*16*16), out proj 16*64*64,
    # MLP 2*16*64*256; two layers.
    per_layer = 3 * 16 * 64 * 64 + 2 * 4 * 16 * 16 * 16 + 16 * 64 * 64 + 2 * 16 * 64 * 256
    assert c.total == 2 * per_layer
    with pytest.raises(GraphoptError, match="unbound dim 'seq'"):
        count_macs(m, batch=1)


def test_params_and_activation_memory():
    m = onnx.load(MODELS / "digits_cnn.onnx")
    p = count_params(m)
    assert p.total == sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    assert p.bytes == sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer)
    mem1 = estimate_activation_memory(m, batch=1)
    mem8 = estimate_activation_memory(m, batch=8)
    assert 0 < mem1.peak_bytes < mem8.peak_bytes
    # the peak is at least the largest single live set we can reason about by hand:
    # the 16x8x8 float feature map of the first conv plus its BN output
    assert mem1.peak_bytes >= 2 * 16 * 8 * 8 * 4
    # and never more than every activation at once
    assert mem1.peak_bytes <= mem1.total_bytes


def test_chain_liveness_hand_computed():
    # x -> Relu -> a -> Relu -> b -> Relu -> c: peak is two live tensors (in + out)
    nodes = [helper.make_node("Relu", [i], [o]) for i, o in (("x", "a"), ("a", "b"), ("b", "c"))]
    m = _model(nodes, [_f("x", [1, 1000])], [_f("c", [1, 1000])])
    mem = estimate_activation_memory(m)
    assert mem.peak_bytes == 2 * 4000
    # a skip connection keeps x alive to the end: 3 tensors at the Add
    add = helper.make_node("Add", ["c", "x"], ["d"])
    m = _model(nodes + [add], [_f("x", [1, 1000])], [_f("d", [1, 1000])])
    assert estimate_activation_memory(m).peak_bytes == 3 * 4000


def test_profile_cli_json_and_table(capsys, tmp_path):
    from graphopt.testing.archs import mobilenet_v2

    path = tmp_path / "mnv2.onnx"
    onnx.save(mobilenet_v2(batch="N", image=64, width=0.5, max_repeats=1), path)
    rc = cli_main(["profile", str(path), "--batch", "1,4", "--runs", "2", "--warmup", "1", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    b1, b4 = data["batches"]
    assert (b1["batch"], b4["batch"]) == (1, 4)
    assert b4["macs"] == 4 * b1["macs"] > 0
    assert b1["input_shapes"] == {"input": [1, 3, 64, 64]}
    assert b1["latency"]["runs"] == 2 and b1["latency"]["p50_ms"] > 0
    assert b4["activation_memory"]["peak_bytes"] > b1["activation_memory"]["peak_bytes"]
    assert data["threads"] >= 1
    mm = data["measured_memory"]
    assert mm["session_peak_bytes"] > 0 and mm["run_bytes"] >= mm["session_bytes"]
    assert data["params"]["total"] == sum(int(np.prod(t.dims)) for t in onnx.load(path).graph.initializer)
    # nodes in the json add up to the totals
    assert sum(n["macs"] for n in b1["counts"]["nodes"]) == b1["macs"]

    rc = cli_main(["profile", str(path), "--batch", "2", "--no-latency", "--no-memory", "--top", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "Conv" in out and "MACs" in out and "p50" not in out


def test_profile_binds_leading_symbolic_dim_to_1(capsys):
    """Like graphopt compile: a symbolic batch is bound to 1 without --batch, with a note."""
    rc = cli_main(["profile", str(MODELS / "digits_cnn.onnx"), "--no-latency", "--no-memory", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    data = json.loads(cap.out)
    assert data["batches"][0]["batch"] == 1
    assert data["batches"][0]["input_shapes"] == {"input": [1, 1, 8, 8]}
    assert sum("leading symbolic dim batch of input(s) input bound to 1" in n for n in data["notes"]) == 1
    rc = cli_main(["profile", str(MODELS / "tiny_transformer.onnx"), "--input-shape", "input_ids=1x16",
                   "--no-latency", "--no-memory"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "bound to 1" not in cap.out  # the given shape binds the batch: nothing to say


def test_profile_cli_errors_are_one_line(capsys, tmp_path):
    # the batch is bound to 1 by default; the symbolic seq still needs --input-shape
    rc = cli_main(["profile", str(MODELS / "tiny_transformer.onnx"), "--no-latency", "--no-memory"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "input 'input_ids' has shape [1, seq]" in err and "--input-shape input_ids=1xN" in err, err
    rc = cli_main(["profile", str(MODELS / "digits_cnn.onnx"), "--batch", "x"])
    assert rc == 2 and "bad --batch" in capsys.readouterr().err
    rc = cli_main(["profile", str(ZOO / "light_squeezenet.onnx"), "--batch", "8"])
    assert rc == 2 and "fixed leading dim" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(ZOO.glob("*.onnx")), ids=lambda p: p.stem)
def test_zoo_models_fully_counted(path):
    c = count_macs(onnx.load(path, load_external_data=False))
    assert c.total > 1e8 and not c.uncounted and not c.unresolved
    assert c.flops > 2 * c.total  # MAC ops plus elementwise work


def test_data_dependent_shapes_strict_error_and_run_fallback():
    from graphopt.analysis import profile_model

    # k = number of positive inputs: NonZero makes [1, k]; MatMul [k, 1] x [1, 4] costs 4k
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("NonZero", ["pos"], ["nz"]),
        helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["nzf"], ["col"], perm=[1, 0]),
        helper.make_node("MatMul", ["col", "w"], ["y"], name="mm"),
    ]
    m = _model(nodes, [_f("x", [6])], [_f("y", None)],
               [numpy_helper.from_array(np.zeros((), np.float32), "zero"), _w("w", (1, 4))])
    with pytest.raises(GraphoptError, match="data-dependent"):
        count_macs(m)
    assert count_macs(m, strict=False).unresolved == ["mm"]
    prof = profile_model(m, latency=False, measure_memory=False)
    k = int((np.random.default_rng(0).standard_normal(6) > 0).sum())  # the probe's inputs
    assert prof.first.macs.total == 4 * k and not prof.first.macs.unresolved
    assert any("onnxruntime run" in n for n in prof.notes)


def test_profile_quiet_and_progress_only_on_a_terminal(capsys, monkeypatch):
    import io
    import sys
    import time

    from graphopt.cli.present import progress_callback

    rc = cli_main(["profile", str(MODELS / "digits_cnn.onnx"), "--batch", "2", "--runs", "2", "-q"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out == "" and captured.err == ""  # -q and no TTY: silent
    with progress_callback(quiet=False) as progress:
        assert progress is None  # pytest's stderr is not a terminal

    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    with progress_callback(quiet=True) as progress:
        assert progress is None
    with progress_callback(quiet=False) as progress:
        progress("benchmarking (batch 2) 1/20")
        time.sleep(0.3)
    assert "benchmarking (batch 2) 1/20" in fake.getvalue()
