"""Tuning trials counted through graphopt.progress (issue 17): the library reports each
measured batch of MetaSchedule candidates, and `graphopt compile --tune-trials N` shows a
bar with trials measured / N on a terminal even though TVM's own stderr is captured."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphopt import progress
from test_progress import Recorder  # the sink that records what the library reports

pytest.importorskip("tvm", reason="pip install 'graphopt[tvm]'")

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn.onnx"


class _Result:
    def __init__(self, error_msg=None):
        self.error_msg = error_msg


def test_measured_batches_are_counted_and_failures_kept(tmp_path):
    """FailureLog.record is what MetaSchedule's measure callback calls for each batch."""
    from graphopt import tuning

    rec = Recorder()
    terminal = tmp_path / "terminal"
    with open(terminal, "w") as shown, progress.reporting(rec):
        before = os.fstat(2)
        with progress.task("tuning (trials measured)", 5) as counted:
            log = tuning.FailureLog(counted, shown.fileno())
            log.record("fused_conv2d", [_Result()] * 3, [_Result()] * 3)
            log.record("fused_conv2d", [_Result(), _Result("RuntimeError: build failed")],
                       [_Result(), _Result()])
            log.record("fused_matmul", [_Result()], [_Result("TimeoutError: timed out after 300 s")])
        after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)   # fd 2 given back
    assert rec.started == [("tuning (trials measured)", 5)]
    assert rec.advanced == {0: 5} and rec.finished == [0]   # 3 + 2 + 1 measured, capped at 5
    assert log.reasons == {"fused_conv2d": "RuntimeError: build failed",
                           "fused_matmul": "TimeoutError: timed out after 300 s"}


def test_without_a_sink_nothing_is_shown():
    from graphopt import tuning

    log = tuning.FailureLog(progress.task("tuning (trials measured)", 2), terminal=None)
    log.record("t", [_Result()] * 2, [_Result()] * 2)
    assert log.counted.completed == 2 and log.reasons == {}


def _run_on_terminal(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as stdout and stderr; (exit code, all it wrote)."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="160", TERM="xterm")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env,
                            cwd=REPO)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for {timeout} s: {b''.join(chunks)[-2000:]!r}")
            try:
                data = os.read(master, 65536)
            except OSError:   # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def _graphopt() -> str:
    return shutil.which("graphopt") or str(Path(sys.executable).parent / "graphopt")


@pytest.mark.slow
def test_compile_shows_a_tuning_bar_on_a_terminal(tmp_path):
    """A real tuning run (4 trials of the smallest task share): the bar reaches the
    terminal through quiet_tvm's capture of fd 2, with the last batch counted."""
    code, text = _run_on_terminal(
        [_graphopt(), "compile", str(DIGITS), "--input-shape", "input=1x1x8x8",
         "--tune-trials", "4", "--tune-share", "0.01", "--tune-cache", str(tmp_path / "cache"),
         "-o", str(tmp_path / "d.so")], timeout=600)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert code == 0, plain[-2000:]
    assert "tuning (trials measured)" in plain
    counts = {int(m) for m in re.findall(r"tuning \(trials measured\)\D*?(\d)/4", plain)}
    assert 4 in counts, plain[-2000:]   # the bar reached the terminal with the last batch counted
