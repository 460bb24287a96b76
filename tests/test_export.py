"""graphopt export: OpenVINO, LiteRT, MNN (CPU, in CI) and TensorRT (NVIDIA GPU only).

Each runtime's converted model is checked twice: by the export's own verification
(graphopt.verify.compare with the runtime as the second model) and here, independently,
on other inputs (the digits test set; seeded draws) against onnxruntime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from _export_helpers import DIGITS, MODELS, REPO, SUFFIX, TRANSFORMER, perturb_weights_in_file
from conftest import run_ort
from graphopt.cli import main as cli
from graphopt.export import BrokenConversion, ConversionError, export_model, make_runner
from graphopt.export.common import fit_samples, resolve_shapes, time_interleaved
from graphopt.export.driver import EXPORT_ATOL, EXPORT_RTOL

CPU_RUNTIMES = ("openvino", "tflite", "mnn")


def _needs(runtime: str) -> None:
    from graphopt.export.driver import target

    why = target(runtime).available()
    if why:
        pytest.skip(why)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(runtime, model label) -> ExportResult, each export made once per module."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("exports")

    def get(runtime: str, label: str):
        if (runtime, label) not in cache:
            _needs(runtime)
            getter, shapes = MODELS[label]
            src = getter()
            if src is None:
                pytest.skip("rapidocr-onnxruntime's PP-OCR models are not installed")
            out = root / f"{label}-{runtime}{SUFFIX[runtime]}"
            cache[(runtime, label)] = (export_model(src, runtime, out, input_shapes=shapes), src, shapes)
        return cache[(runtime, label)]

    return get


def _independent_check(res, src: Path, shapes: dict, seed: int = 123, n: int = 4) -> float:
    """Run the converted model on inputs the export did not draw; return the worst error
    relative to the output's magnitude, asserting the export's float bound."""
    from graphopt.verify.inputs import InputSpace

    model = onnx.load(str(src))
    runner = make_runner(res.runtime, res.output, model, resolve_shapes(model, shapes))
    worst = 0.0
    for ex in InputSpace.from_model(model, resolve_shapes(model, shapes)).draw(n, seed):
        ref = run_ort(model, ex.feeds)
        got = runner.run(ex.feeds)
        for a, b in zip(ref, got):
            assert a.shape == b.shape and a.dtype == b.dtype
            scale = float(np.max(np.abs(a)))
            err = float(np.max(np.abs(a - b)))
            assert err <= EXPORT_ATOL + EXPORT_RTOL * scale, (err, scale)
            worst = max(worst, err / max(scale, 1e-12))
    return worst


# ------------------------------------------------------------------ the three CPU runtimes x three models


@pytest.mark.parametrize("runtime", ["openvino", "mnn"])
@pytest.mark.parametrize("label", ["digits", "transformer", "ppocr_cls"])
def test_export_verified(exports, runtime, label):
    res, src, shapes = exports(runtime, label)
    v = res.verification
    assert v.ok and not v.skipped and v.examples == 8, v.summary
    assert v.backend == f"onnxruntime vs {'litert' if runtime == 'tflite' else runtime}"
    assert res.output.exists() and all(f.exists() for f in res.files)
    _independent_check(res, src, shapes)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["digits", "transformer", "ppocr_cls"])
def test_export_verified_tflite(exports, label):
    res, src, shapes = exports("tflite", label)
    v = res.verification
    assert v.ok and not v.skipped and v.examples == 8, v.summary
    assert v.backend == "onnxruntime vs litert"
    _independent_check(res, src, shapes)
    if label in ("digits", "ppocr_cls"):  # 4-D image inputs: onnx2tf made them NHWC, the runner says so
        assert "channel-first -> channel-last" in res.layout
    else:
        assert res.layout == "inputs in the ONNX layout"


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_digits_predictions_agree(exports, runtime):
    """On the real digits test set the converted model predicts what onnxruntime predicts."""
    if runtime == "tflite":
        pytest.importorskip("ai_edge_litert")
    res, src, shapes = exports(runtime, "digits")
    model = onnx.load(str(src))
    runner = make_runner(runtime, res.output, model, resolve_shapes(model, shapes))
    test = np.load(REPO / "models" / "digits_test.npz")
    xs, agree, n = test["input"][:64], 0, 0
    for i in range(len(xs)):
        feeds = {"input": xs[i:i + 1]}
        a, b = run_ort(model, feeds)[0], runner.run(feeds)[0]
        agree += int(a.argmax() == b.argmax())
        n += 1
    assert agree == n


# ------------------------------------------------------------------ a converter bug is caught


@pytest.mark.parametrize("runtime", ["openvino", "mnn"])
def test_broken_conversion_is_caught_with_reproducer(tmp_path, runtime):
    _needs(runtime)
    changed = []

    def tamper(files):
        target = files[1] if runtime == "openvino" else files[0]   # OpenVINO's weights are in the .bin
        onnx_model = onnx.load(str(files[0].with_suffix(".onnx")))
        changed.append(perturb_weights_in_file(target, onnx_model))

    out = tmp_path / f"d{SUFFIX[runtime]}"
    with pytest.raises(BrokenConversion) as e:
        export_model(DIGITS, runtime, out, tamper=tamper, repro_dir=tmp_path / "repro")
    assert changed
    msg = str(e.value)
    assert "\n" not in msg and "output 'logits'" in msg and f"the {runtime} model disagrees" in msg
    # the bug is in this file only: a fresh conversion with every tensor marked does not
    # reproduce it, so no node is blamed
    assert "first divergence" not in msg
    assert not out.exists() and not list(tmp_path.glob(".graphopt-export-*")), "nothing is written on failure"
    repro = tmp_path / "repro"
    names = {p.name for p in repro.iterdir()}
    assert {"model.onnx", "inputs.npz", "README.txt", f"d{SUFFIX[runtime]}"} <= names
    # the reproducer's own command finds the same failure, through graphopt verify
    readme = (repro / "README.txt").read_text()
    assert "graphopt verify" in readme
    rc = cli(["verify", str(repro / "model.onnx"), str(repro / f"d{SUFFIX[runtime]}"),
              "--samples", str(repro / "inputs.npz"), "--repro-dir", str(tmp_path / "repro2")])
    assert rc == 1


@pytest.mark.slow
def test_broken_tflite_conversion_is_caught(tmp_path):
    _needs("tflite")

    def tamper(files):
        perturb_weights_in_file(files[0], onnx.load(str(files[0].with_suffix(".onnx"))))

    with pytest.raises(BrokenConversion, match="output 'logits'"):
        export_model(DIGITS, "tflite", tmp_path / "d.tflite", tamper=tamper, repro_dir=tmp_path / "repro")
    repro = tmp_path / "repro"
    assert (repro / "d.tflite").exists() and not (tmp_path / "d.tflite").exists()
    # graphopt verify takes the .tflite directly (NHWC handled) and finds the same failure
    assert cli(["verify", str(repro / "model.onnx"), str(repro / "d.tflite"), "--samples", str(repro / "inputs.npz"),
                "--repro-dir", str(tmp_path / "repro2")]) == 1


def _one_op_model(tmp_path: Path, op: str, shape: list, outs: list[tuple[str, int]]) -> Path:
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], [n for n, _ in outs])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(n, t, None) for n, t in outs])
    path = tmp_path / f"{op.lower()}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_conversion_failure_names_the_op_with_reproducer(tmp_path, capsys):
    """OpenVINO 2026.4 has no conversion rule for Det: exit 2, one line naming it, a reproducer."""
    _needs("openvino")
    from onnx import TensorProto

    src = _one_op_model(tmp_path, "Det", [1, 3, 3], [("y", TensorProto.FLOAT)])
    rc = cli(["export", str(src), "--to", "openvino", "-o", str(tmp_path / "det.xml"),
              "--repro-dir", str(tmp_path / "repro")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Det" in err and "reproducer in" in err, err
    assert not (tmp_path / "det.xml").exists()
    assert {"model.onnx", "README.txt"} <= {p.name for p in (tmp_path / "repro").iterdir()}
    assert "graphopt export" in (tmp_path / "repro" / "README.txt").read_text()


def test_real_mnn_mismatch_unique_indices(tmp_path, capsys):
    """Not simulated: MNN 3.6.1 converts ONNX Unique, but orders negative values backwards
    (-0.13 before -0.54 on the first draw), so values, indices and inverse indices differ
    from onnxruntime's. Caught, exit 1, and localized to the Unique node."""
    _needs("mnn")
    from onnx import TensorProto

    src = _one_op_model(tmp_path, "Unique", [8], [("y", TensorProto.FLOAT), ("idx", TensorProto.INT64),
                                                  ("inv", TensorProto.INT64), ("cnt", TensorProto.INT64)])
    rc = cli(["export", str(src), "--to", "mnn", "-o", str(tmp_path / "u.mnn"), "--repro-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "output 'idx'" in err and len(err.splitlines()) == 1, err
    # localized: converted again with every tensor as an output, the first to diverge is Unique's
    assert "first divergence at node" in err and "(Unique)" in err, err
    assert not (tmp_path / "u.mnn").exists() and (tmp_path / "r" / "u.mnn").exists()


# ------------------------------------------------------------------ the CLI


def test_cli_export_and_verify_openvino(tmp_path, capsys):
    _needs("openvino")
    before = _sha(DIGITS)
    out = tmp_path / "d.xml"
    assert cli(["export", str(DIGITS), "--to", "openvino", "-o", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["runtime"] == "openvino" and d["verification"]["status"] == "ok"
    assert out.exists() and out.with_suffix(".bin").exists() and _sha(DIGITS) == before
    assert cli(["verify", str(DIGITS), str(out)]) == 0
    assert "equivalent in openvino" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["--to", "openvino", "-o", "{tmp}/d.tflite"], "should end in .xml"),
    (["--to", "mnn", "--precision", "int8", "-o", "{tmp}/d.mnn"], "cannot take a QDQ INT8 model"),
    (["--to", "openvino", "-o", "{tmp}/nofolder/d.xml"], "does not exist"),
    (["--to", "openvino", "--input-shape", "nope=1x1x8x8", "-o", "{tmp}/d.xml"], "not an input"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    _needs("openvino")
    _needs("mnn")
    before = _sha(DIGITS)
    rc = cli(["export", str(DIGITS), *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "nothing written"
    assert _sha(DIGITS) == before


def test_symbolic_dim_needs_input_shape(tmp_path, capsys):
    cls = MODELS["ppocr_cls"][0]()
    if cls is None:
        pytest.skip("rapidocr-onnxruntime's PP-OCR models are not installed")
    _needs("openvino")
    rc = cli(["export", str(cls), "--to", "openvino", "-o", str(tmp_path / "c.xml")])
    err = capsys.readouterr().err
    assert rc == 2 and "--input-shape x=1x3x1x1" in err


def test_verify_dispatch_unknown_converted_file(tmp_path, capsys):
    missing = tmp_path / "none.mnn"
    _needs("mnn")
    assert cli(["verify", str(DIGITS), str(missing)]) == 2
    assert "no such file" in capsys.readouterr().err


# ------------------------------------------------------------------ INT8 carried through


def test_openvino_int8_runs_quantized_layers(tmp_path):
    _needs("openvino")
    from graphopt.samples import load_samples

    samples = load_samples(REPO / "models" / "digits_calib.npz")
    res = export_model(DIGITS, "openvino", tmp_path / "d8.xml", precision="int8", samples=samples)
    assert res.verification.ok and res.verification.contract.kind == "lossy"
    assert res.verification.worst.error <= 0.1      # rel_l2 against the FP32 model in onnxruntime
    assert any(n.op_type == "QuantizeLinear" for n in res.model.graph.node)
    runner = make_runner("openvino", res.output, onnx.load(str(DIGITS)), {"input": (1, 1, 8, 8)})
    assert runner.int8_ops() >= 3, "OpenVINO runs the QDQ convolutions in 8-bit"


@pytest.mark.parametrize("runtime", ["openvino", "mnn"])
def test_fp16_export_is_lossy_checked_and_smaller(tmp_path, runtime):
    """FP16: OpenVINO gets graphopt's fp16 pass, MNN its converter's --fp16 weights; both are
    judged under the lossy contract (rel_l2 <= 0.01) and store half-size weights."""
    _needs(runtime)
    r32 = export_model(DIGITS, runtime, tmp_path / f"d32{SUFFIX[runtime]}")
    r16 = export_model(DIGITS, runtime, tmp_path / f"d16{SUFFIX[runtime]}", precision="fp16")
    v = r16.verification
    assert v.ok and v.contract.kind == "lossy" and v.contract.budget == {"rel_l2": 0.01} and v.worst.error <= 0.01
    size = lambda res: res.files[-1].stat().st_size  # noqa: E731 - OpenVINO: the .bin
    assert size(r16) < 0.7 * size(r32)


@pytest.mark.slow
def test_tflite_full_integer(tmp_path):
    _needs("tflite")
    from graphopt.samples import load_samples

    samples = load_samples(REPO / "models" / "digits_calib.npz")
    res = export_model(DIGITS, "tflite", tmp_path / "d8.tflite", precision="int8", samples=samples)
    v = res.verification
    assert v.ok and v.contract.kind == "lossy" and v.worst.error <= 0.1, v.summary
    runner = make_runner("tflite", res.output, onnx.load(str(DIGITS)), {"input": (1, 1, 8, 8)})
    assert runner.quantized, "int8 inputs: a full-integer model"
    from ai_edge_litert.interpreter import Interpreter

    kinds = {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(res.output)).get_tensor_details()}
    assert "int8" in kinds
    # real digits: top-1 agreement with the FP32 model in onnxruntime
    test = np.load(REPO / "models" / "digits_test.npz")
    model = onnx.load(str(DIGITS))
    agree = sum(int(run_ort(model, {"input": x[None]})[0].argmax() == runner.run({"input": x[None]})[0].argmax())
                for x in test["input"][:100])
    assert agree >= 95


# ------------------------------------------------------------------ MNN's converter is kept from pip and the network


def _dists() -> set[str]:
    out = subprocess.run([sys.executable, "-c",
                          "import importlib.metadata as m; print('\\n'.join(sorted(f'{d.metadata[\"Name\"]}=={d.version}' "
                          "for d in m.distributions())))"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_mnn_converter_installs_nothing_and_connects_nowhere(tmp_path, monkeypatch):
    _needs("mnn")
    strace = shutil.which("strace")
    assert strace, "strace is needed to watch the converter's system calls (apt-get install strace)"
    from graphopt.export import mnn

    # a canary pip first on the parent's PATH: if anything ran "pip", it would leave a mark
    canary = tmp_path / "bin"
    canary.mkdir()
    mark = tmp_path / "pip-was-run"
    for name in ("pip", "pip3"):
        (canary / name).write_text(f"#!/bin/sh\necho \"$@\" >> {mark}\n")
        (canary / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{canary}:{os.environ['PATH']}")
    before = _dists()
    cmd, env = mnn.guarded_command(tmp_path / "events.txt", DIGITS, tmp_path / "d.mnn")
    assert Path(env["PATH"]).is_dir() and not any(Path(env["PATH"]).iterdir()), "the converter's PATH holds nothing"
    trace = tmp_path / "trace.txt"
    try:
        proc = subprocess.run([strace, "-f", "-qq", "-e", "trace=connect,execve", "-o", str(trace), *cmd],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert (tmp_path / "d.mnn").stat().st_size > 1024
    lines = trace.read_text().splitlines()
    connects = [line for line in lines if "connect(" in line]
    assert not connects, connects
    # control: the same watch does see a connection attempt (to a closed loopback port)
    control = tmp_path / "control.txt"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=connect,execve", "-o", str(control), sys.executable, "-c",
                    "import socket\ntry: socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError: pass"],
                   capture_output=True, timeout=60)
    assert any("connect(" in line for line in control.read_text().splitlines())
    execs = [re.search(r'execve\("([^"]+)"', line).group(1) for line in lines if "execve(" in line and "= 0" in line]
    assert all(Path(e).name in ("unshare", Path(sys.executable).name) or e == sys.executable for e in execs), execs
    assert not mark.exists(), "pip was run"
    assert _dists() == before, "packages changed"
    assert not (tmp_path / "events.txt").exists() or not (tmp_path / "events.txt").read_text().strip()


def test_mnn_guard_refuses_mnn_tools(tmp_path):
    """What MNN's own wrapper would do (import MNN.tools -> os.system("pip install ...")) is
    refused inside the guard, and recorded."""
    _needs("mnn")
    from graphopt.export import mnn

    events = tmp_path / "events.txt"
    cmd, env = mnn.guarded_command(events, DIGITS, tmp_path / "d.mnn", "--import-mnn-tools")
    before = _dists()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    text = events.read_text()
    assert "import MNN.tools" in text and "refused" in text
    assert _dists() == before


# ------------------------------------------------------------------ the isolated onnx2tf environment


@pytest.mark.slow
def test_onnx2tf_env_is_isolated():
    """onnx2tf's pins live in their own environment; graphopt's onnx, onnxruntime and
    numpy are untouched by it."""
    _needs("tflite")
    from graphopt.export import toolenv

    py = toolenv.python_of("onnx2tf")
    assert Path(py).resolve().parents[1] != Path(sys.prefix).resolve()
    out = subprocess.run([str(py), "-c", "import importlib.metadata as m; "
                          "print(m.version('numpy'), m.version('onnx'), m.version('onnxruntime'), m.version('tensorflow'))"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    np_v, onnx_v, ort_v, tf_v = out.stdout.split()
    assert (np_v, onnx_v, ort_v) == ("1.26.4", "1.19.1", "1.23.0") and tf_v.startswith("2.19")
    ours = (importlib.metadata.version("numpy"), importlib.metadata.version("onnx"),
            importlib.metadata.version("onnxruntime"))
    assert ours != (np_v, onnx_v, ort_v)


def test_toolenv_key_follows_requirements(monkeypatch, tmp_path):
    from graphopt.export import toolenv

    monkeypatch.setenv("GRAPHOPT_TOOLS_DIR", str(tmp_path))
    a = toolenv.env_path("onnx2tf")
    monkeypatch.setitem(toolenv.TOOLS, "onnx2tf", ["onnx2tf==0.0.1"])
    b = toolenv.env_path("onnx2tf")
    assert a != b and a.parent == b.parent == tmp_path
    with pytest.raises(ConversionError, match="python -m graphopt.export.toolenv onnx2tf"):
        toolenv.python_of("onnx2tf", create=False)


def test_litert_node_names_sanitized():
    from graphopt.export.litert import prepare

    m = onnx.load(str(DIGITS))
    m.graph.node[0].name = "Softmax@0"
    m.graph.node[1].name = "Softmax_0"
    m.graph.node[2].name = "Softmax:0"
    names = [n.name for n in prepare(m).graph.node]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[A-Za-z0-9_./-]+", n) for n in names)
    assert m.graph.node[0].name == "Softmax@0", "the input model is not modified"


# ------------------------------------------------------------------ shapes, samples, timing helpers


def test_resolve_shapes_and_fit_samples():
    m = onnx.load(str(TRANSFORMER))
    with pytest.raises(Exception, match="--input-shape input_ids=1x1"):
        resolve_shapes(m, {})
    assert resolve_shapes(m, {"input_ids": (2, 5)}) == {"input_ids": (2, 5)}
    assert resolve_shapes(onnx.load(str(DIGITS)), {}) == {"input": (1, 1, 8, 8)}
    batch = {"input": np.zeros((6, 1, 8, 8), np.float32)}
    assert len(fit_samples([batch], {"input": (1, 1, 8, 8)})) == 6
    assert len(fit_samples([batch], {"input": (2, 1, 8, 8)})) == 3
    assert fit_samples([batch], {"input": (4, 1, 8, 8)}) == []


def test_time_interleaved_orders_and_counts():
    seen = []
    t = time_interleaved({"a": lambda: seen.append("a"), "b": lambda: seen.append("b")}, runs=4, warmup=1)
    assert len(t["a"].samples) == len(t["b"].samples) == 4
    assert seen[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotated each run


def test_profile_runtime_cli(capsys):
    _needs("openvino")
    assert cli(["profile", str(DIGITS), "--runtime", "openvino", "--runs", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "latency in openvino beside onnxruntime" in out and "as given" in out and "graphopt clean,fuse" in out


# ------------------------------------------------------------------ TensorRT (NVIDIA GPU only)


def test_tensorrt_refused_without_gpu(tmp_path, capsys, monkeypatch):
    from graphopt.export import tensorrt

    monkeypatch.setattr(tensorrt, "gpu_present", lambda: False)  # as on this project's machines
    assert cli(["export", str(DIGITS), "--to", "tensorrt", "-o", str(tmp_path / "d.engine")]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err
    assert not (tmp_path / "d.engine").exists()


@pytest.mark.requires_gpu
def test_tensorrt_export(tmp_path):
    res = export_model(DIGITS, "tensorrt", tmp_path / "d.engine")
    assert res.verification.ok and res.output.exists()
