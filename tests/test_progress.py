"""Counted progress (issue 17): the library reports counts through graphopt.progress,
the CLI shows them as rich bars on a terminal only, and log messages go through rich's
RichHandler while the bars are live (never onto the spinner line)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt import progress
from graphopt.cli.present import progress_callback

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn.onnx"


class Recorder:
    def __init__(self):
        self.started, self.advanced, self.finished = [], {}, []

    def start(self, label, total):
        key = len(self.started)
        self.started.append((label, total))
        self.advanced[key] = 0
        return key

    def advance(self, key, n=1):
        self.advanced[key] += n

    def finish(self, key):
        self.finished.append(key)


def test_no_sink_is_a_no_op():
    assert not progress.active()
    with progress.task("x", 3) as t:
        t.advance(5)
    assert t.completed == 3   # capped at the total


def test_compare_counts_examples():
    from graphopt.verify import compare

    model = onnx.load(DIGITS)
    rec = Recorder()
    with progress.reporting(rec):
        result = compare(model, model, "float", examples=5, input_shapes={"input": (1, 1, 8, 8)},
                         label="verifying test")
    assert result.ok and result.examples == 5
    assert rec.started == [("verifying test", 5)]
    assert rec.advanced == {0: 5} and rec.finished == [0]
    assert not progress.active()


@pytest.mark.parametrize("method,reads", [("minmax", 1), ("percentile", 2)])
def test_calibration_counts_batches(method, reads):
    from graphopt.passes import _calibrate

    model = onnx.load(DIGITS)
    with np.load(REPO / "models" / "digits_calib.npz") as d:
        x = d["input"]
    samples = [{"input": x[i:i + 1]} for i in range(6)]
    rec = Recorder()
    with progress.reporting(rec):
        ranges = _calibrate.collect(model, [model.graph.output[0].name], samples, method)
    assert ranges and rec.started == [("calibrating (batches)", 6 * reads)]
    assert rec.advanced == {0: 6 * reads} and rec.finished == [0]


def test_distill_counts_steps():
    pytest.importorskip("torch", reason="pip install 'graphopt[distill]'")
    import graphopt

    model = onnx.load(DIGITS)
    with np.load(REPO / "models" / "digits_calib.npz") as d:
        samples = [{"input": d["input"]}]
    rec = Recorder()
    with progress.reporting(rec):
        graphopt.optimize(model, "prune(ratio=0.5, round_to=1),distill(steps=5)", samples=samples,
                          verify=False)
    steps = [i for i, (label, _) in enumerate(rec.started) if label == "distilling (steps)"]
    assert len(steps) == 1 and rec.started[steps[0]][1] == 5
    assert rec.advanced[steps[0]] == 5 and steps[0] in rec.finished


@pytest.fixture
def graphopt_logger():
    root = logging.getLogger("graphopt")
    saved = (list(root.handlers), root.level, root.propagate)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("graphopt: %(levelname)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False
    yield root, handler, stream
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def terminal(width=100):
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def test_bar_counts_and_logs_above_it(graphopt_logger):
    root, plain, stream = graphopt_logger
    con = terminal()
    with progress_callback(quiet=False, console=con) as step:
        assert step is not None and progress.active()
        step("fuse")
        # the plain handler is swapped for rich's while the display is live
        assert plain not in root.handlers
        assert sum(type(h).__name__ == "RichHandler" for h in root.handlers) == 1
        with progress.task("verifying fuse", 4) as t:
            for _ in range(4):
                t.advance()
            logging.getLogger("graphopt.passes").warning("something to say")
    out = con.file.getvalue()
    assert "verifying fuse" in out and "4/4" in out and "2/4" in out
    # the warning is a line of its own: the spinner line is cleared before it is printed
    lines = [ln for chunk in out.split("\n") for ln in chunk.split("\r")]
    said = [ln for ln in lines if "graphopt: something to say" in ln]
    assert said and all("running" not in ln and "verifying" not in ln for ln in said), said
    assert "WARNING" in said[0]
    assert stream.getvalue() == ""   # nothing went to the plain handler meanwhile
    assert plain in root.handlers and not progress.active()
    assert not any(type(h).__name__ == "RichHandler" for h in root.handlers)


def test_quiet_and_not_a_terminal_show_nothing(graphopt_logger):
    from rich.console import Console

    root, plain, _ = graphopt_logger
    with progress_callback(quiet=True, console=terminal()) as step:
        assert step is None and not progress.active() and plain in root.handlers
    pipe = Console(file=io.StringIO(), force_terminal=False)
    with progress_callback(quiet=False, console=pipe) as step:
        assert step is None and not progress.active()
    assert pipe.file.getvalue() == ""
    with progress_callback(quiet=False) as step:   # pytest's stderr is no terminal
        assert step is None
