"""`graphopt compile --rpc / --rpc-tracker`: verify, time and tune on a device over TVM RPC.

The device is the emulated aarch64 board of tools/emulated-aarch64.sh (qemu-user running
Debian's arm64 python3.11 with the aarch64 TVM wheels as TVM's RPC server on 127.0.0.1),
brought up once per session by the `board` fixture and stopped after. CI installs what it
needs (.ci/run); outside CI a machine that cannot set it up skips these tests.
Times under qemu are never asserted on or used to rank anything."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import GraphoptError
from graphopt.cli import main
from graphopt.testing.tasks import packaged_model

tvm = pytest.importorskip("tvm", reason="TVM is optional: pip install 'graphopt[tvm]'")

from graphopt import codegen, device, tuning  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn.onnx"
SCRIPT = REPO / "tools" / "emulated-aarch64.sh"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _bring_up(*args: str) -> None:
    r = _script("start", *args)
    if r.returncode != 0:
        msg = f"the emulated aarch64 board did not start: {r.stderr.strip()[-500:]}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def board():
    """A direct-mode RPC server on the emulated board: a graphopt.device.Remote."""
    port = free_port()
    _bring_up(str(port))
    try:
        yield device.Remote("127.0.0.1", port, timeout=300)
    finally:
        _script("stop", str(port), timeout=60)


@pytest.fixture(scope="module")
def tracked_board():
    """A tracker with a second emulated board registered under a key."""
    tport, sport, key = free_port(), free_port(), "qemu-aarch64"
    r = _script("tracker", str(tport), timeout=120)
    if r.returncode != 0:
        (pytest.fail if IN_CI else pytest.skip)(f"the RPC tracker did not start: {r.stderr.strip()[-300:]}")
    try:
        _bring_up(str(sport), f"127.0.0.1:{tport}", key)
        yield device.Remote("127.0.0.1", tport, key=key, tracker=True, timeout=300)
    finally:
        _script("stop", str(sport), timeout=60)
        _script("stop", str(tport), timeout=60)


def matmul_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]),
                           helper.make_node("Relu", ["h"], ["y"])], "mm", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def ppocr_cls() -> Path:
    path = packaged_model("rapidocr_onnxruntime", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    assert path is not None, "pip install rapidocr-onnxruntime (in the [test] extra)"
    return path


# ------------------------------------------------------------------------- on the board


@pytest.mark.slow
def test_shipped_model_verified_and_timed_on_the_device(board, tmp_path, capsys):
    out = tmp_path / "digits.aarch64.so"
    rc = main(["compile", str(DIGITS), "--arch", "aarch64", "--rpc", f"{board.host}:{board.port}",
               "--rpc-timeout", "300", "-o", str(out), "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verified"] == "device" and d["kind"] == "shared library", d["verification"]
    assert f"on the RPC server 127.0.0.1:{board.port} vs onnxruntime" in d["verification"]
    assert "ok 8/8" in d["verification"]
    dev = d["device"]
    assert dev["rpc"] == f"127.0.0.1:{board.port}" and dev["checked_on"] == "device"
    assert dev["runs_checked"] >= 8          # the examples really ran on the device
    assert dev["latency"]["median_ms"] > 0 and dev["latency"]["repeat"] == 5
    assert out.read_bytes()[18:20] == (183).to_bytes(2, "little")  # an aarch64 ELF

    # the uploaded library classifies the shipped test digits like onnxruntime, on the device
    import onnxruntime as ort

    data = np.load(REPO / "models" / "digits_test.npz")
    xs = data[data.files[0]].astype(np.float32)[:16].reshape(-1, 1, 1, 8, 8)
    sess = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    with device.connect(board) as s:
        runner = s.load(out, ["input"], ["output"])
        for x in xs:
            ref = sess.run(None, {"input": x})[0]
            got = runner.run({"input": x})[0]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
            assert got.argmax() == ref.argmax()


@pytest.mark.slow
def test_ppocr_classifier_verified_on_the_device(board, tmp_path):
    r = codegen.compile_model(ppocr_cls(), "aarch64-cortex-a72", tmp_path / "cls.so",
                              input_shapes={"x": (1, 3, 48, 192)}, examples=4, remote=board)
    assert r.verified == "device", r.verification
    assert "ok 4/4" in r.verification and "on the RPC server" in r.verification
    assert r.device["latency"]["median_ms"] > 0


@pytest.mark.slow
def test_tuning_measures_on_the_device_and_reuses_only_its_records(board, tmp_path):
    src = tmp_path / "mm.onnx"
    onnx.save(matmul_model(), src)
    cache = tmp_path / "cache"
    r1 = codegen.compile_model(src, "aarch64", tmp_path / "a.so", tune_trials=4, tune_cache=cache,
                               remote=board, examples=4)
    t = r1.tuning
    assert t is not None and t.tasks_tuned >= 1, t
    assert t.tasks_failed == 0, t.failures        # every task got a measured schedule
    assert t.measured_on == board.where
    assert r1.verified == "device" and "ok 4/4" in r1.verification   # the tuned build, on the device
    stamp = json.loads((Path(t.cache) / "measured-on.json").read_text())
    assert stamp["measured_on"] == {"runner": "rpc", "rpc": f"127.0.0.1:{board.port}"}
    assert "aarch64-linux-gnu" in stamp["target"]
    assert any("ranked by times measured on the device" in n for n in r1.notes)
    # the same device and target: the records are reused, nothing is tuned again
    r2 = codegen.compile_model(src, "aarch64", tmp_path / "b.so", tune_trials=4, tune_cache=cache,
                               remote=board, examples=4)
    assert r2.tuning.tasks_tuned == 0 and r2.tuning.cache == t.cache
    assert r2.verified == "device"
    # another device or another target: another database folder, which holds nothing yet
    ttarget = codegen.resolve_target("aarch64").tvm_target()
    other_dev = tuning.cache_folder(cache, ttarget, device.Remote("127.0.0.1", board.port + 1))[0]
    other_tgt = tuning.cache_folder(cache, codegen.resolve_target("aarch64-cortex-a53").tvm_target(), board)[0]
    here = tuning.cache_folder(cache, ttarget, None)[0]
    assert len({str(other_dev), str(other_tgt), str(here), t.cache}) == 4
    assert not other_dev.exists() and not here.exists()


@pytest.mark.slow
def test_tracker_and_key(tracked_board, tmp_path, capsys):
    out = tmp_path / "d.so"
    rc = main(["compile", str(DIGITS), "--arch", "aarch64-cortex-a53",
               "--rpc-tracker", f"{tracked_board.host}:{tracked_board.port}",
               "--rpc-key", tracked_board.key, "--rpc-timeout", "300", "-o", str(out),
               "--verify-examples", "4"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"on device 'qemu-aarch64' of the tracker 127.0.0.1:{tracked_board.port} vs onnxruntime" in text
    assert "ok 4/4" in text and "latency" in text
    # a key nobody registered: one line naming the keys there, exit 2
    rc = main(["compile", str(DIGITS), "--arch", "aarch64", "--rpc-tracker",
               f"127.0.0.1:{tracked_board.port}", "--rpc-key", "jetson", "-o", str(tmp_path / "x.so")])
    err = capsys.readouterr().err
    assert rc == 2 and "no device registered under key 'jetson' (keys at the tracker: qemu-aarch64)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.so").exists()


# ------------------------------------------------------------------------- no device


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    exe = shutil.which("graphopt") or str(Path(sys.executable).parent / "graphopt")
    return subprocess.run([exe, "compile", str(DIGITS), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_dead_server_is_one_line_exit_2_nothing_written(tmp_path):
    port = free_port()   # nothing listens there
    out = tmp_path / "d.so"
    r = _cli("--arch", "aarch64", "--rpc", f"127.0.0.1:{port}", "--rpc-timeout", "20", "-o", str(out))
    assert r.returncode == 2, r.stderr
    assert f"cannot reach the RPC server 127.0.0.1:{port}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_hanging_device_errors_within_its_timeout(tmp_path):
    """A server that accepts and never answers: the RPC handshake would wait forever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        port = listener.getsockname()[1]
        r = _cli("--arch", "aarch64", "--rpc", f"127.0.0.1:{port}", "--rpc-timeout", "3",
                 "-o", str(tmp_path / "d.so"), timeout=180)   # a hang fails here
        assert r.returncode == 2, r.stderr
        assert f"cannot reach the RPC server 127.0.0.1:{port}: no answer within 3 s" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert held, "the client never connected"
        assert list(tmp_path.iterdir()) == []
    finally:
        stop.set()
        th.join()
        for c in held:
            c.close()
        listener.close()


@pytest.mark.parametrize("args, expect", [
    (["--rpc", "localhost"], "--rpc 'localhost': expected HOST:PORT"),
    (["--rpc", "127.0.0.1:70000"], "port 70000 is not in 1..65535"),
    (["--rpc", "127.0.0.1:9090", "--rpc-tracker", "127.0.0.1:9190"], "not both"),
    (["--rpc-tracker", "127.0.0.1:9190"], "--rpc-tracker needs --rpc-key"),
    (["--rpc-key", "rasp4"], "give --rpc-tracker HOST:PORT too"),
    (["--rpc", "127.0.0.1:9090", "--rpc-timeout", "0"], "--rpc-timeout must be more than 0"),
    (["--rpc", "127.0.0.1:9090", "--archive"], "drop --archive to use --rpc"),
])
def test_bad_rpc_options(tmp_path, capsys, args, expect):
    rc = main(["compile", str(DIGITS), "--arch", "aarch64", "-o", str(tmp_path / "d.so"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_missing_cross_linker_or_libc_names_the_debian_package(tmp_path, monkeypatch, capsys):
    """A target whose gcc is missing, then one whose gcc is there but not its C library
    (crti.o): each is one line naming the Debian package (no linker traceback)."""
    import dataclasses

    base = codegen.resolve_target("aarch64")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_gcc = bindir / "graphopt-test-linux-gnu-gcc"
    fake_gcc.write_text("#!/bin/sh\nexit 1\n")
    fake_gcc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    fake = dataclasses.replace(base, name="fake-a64", toolchain="graphopt-test-linux-gnu",
                               apt_package="gcc-graphopt-test", libc_package="libc6-dev-graphopt-test-cross")
    nogcc = dataclasses.replace(fake, name="fake-nogcc", toolchain="graphopt-none-linux-gnu")
    monkeypatch.setattr(codegen, "_PRESETS", codegen._PRESETS + [fake, nogcc])
    out = tmp_path / "out"
    out.mkdir()
    for target, expect in (("fake-nogcc", "apt-get install gcc-graphopt-test"),
                           ("fake-a64", "apt-get install libc6-dev-graphopt-test-cross")):
        rc = main(["compile", str(DIGITS), "--arch", target, "--rpc", "127.0.0.1:9",
                   "-o", str(out / "d.so")])
        err = capsys.readouterr().err
        assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert list(out.iterdir()) == []
    # without --rpc: a gcc without its C library fails the link the same way (without a gcc
    # at all, an object archive and the link hint are written instead: test_codegen)
    rc = main(["compile", str(DIGITS), "--arch", "fake-a64", "--no-verify", "-o", str(out / "d.so")])
    err = capsys.readouterr().err
    assert rc == 2 and "apt-get install libc6-dev-graphopt-test-cross" in err, err
    assert len(err.strip().splitlines()) == 1 and list(out.iterdir()) == []


@pytest.mark.slow
def test_every_failed_trial_is_reported_and_not_recorded(tmp_path, monkeypatch):
    """Tuning where every measurement fails (the runner times out, as MetaSchedule's
    LocalRunner did on a loaded machine; simulated here so the test is quick): the build
    says so with the runner's reason, keeps the default schedule (still verified), and the
    database holds no result for the task."""
    import logging

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class TimesOut(ms.runner.PyRunner):
        def run(self, runner_inputs):
            return [LocalRunnerFuture(res=None, error_message="LocalRunner: Timeout, killed after 30 seconds")
                    for _ in runner_inputs]

    monkeypatch.setattr(tuning, "_runner", lambda ms_, remote: TimesOut())
    src = tmp_path / "mm.onnx"
    onnx.save(matmul_model(), src)
    cache = tmp_path / "cache"
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.set_name("test-device-warnings")
    handler.emit = records.append
    logging.getLogger("graphopt.tuning").addHandler(handler)
    try:
        r = codegen.compile_model(src, "host", tmp_path / "a.so", tune_trials=4, tune_cache=cache,
                                  examples=4)
    finally:
        logging.getLogger("graphopt.tuning").removeHandler(handler)
    t = r.tuning
    assert t.tasks_tuned >= 1 and t.tasks_failed == t.tasks_tuned, t
    assert "timeout" in t.failures[0].lower(), t.failures
    assert any("every trial failed" in n for n in r.notes), r.notes
    assert any("measured nothing" in rec.getMessage() for rec in records)
    assert r.verified == "artifact" and "ok 4/4" in r.verification
    db = ms.database.JSONDatabase(work_dir=t.cache)
    assert not any(tuning.has_result(db, rec.workload.mod) for rec in db.get_all_tuning_records())
