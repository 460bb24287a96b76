"""Latency and throughput of a model in onnxruntime (CPU).

`measure_latency` creates one session (intra-op threads fixed and shown, spinning off so
idle threads do not steal the CPU from the measurement), runs warm-up iterations, then
times `runs` iterations one by one with perf_counter and reports percentiles. Inputs are
random data of the bound shapes (seeded).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from ..runtime import random_inputs, session

log = logging.getLogger(__name__)

@dataclass
class LatencyResult:
    """Timings of one batch size, in seconds."""

    batch: int | None
    threads: int
    warmup: int
    runs: int
    times: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times, q)) if self.times else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.times)) if self.times else float("nan")

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return (self.batch or 1) / self.p50 if self.times and self.p50 > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"batch": self.batch, "threads": self.threads, "warmup": self.warmup,
                "runs": self.runs, "p50_ms": self.p50 * 1e3, "p90_ms": self.p90 * 1e3,
                "p99_ms": self.p99 * 1e3, "mean_ms": self.mean * 1e3,
                "throughput_per_s": self.throughput}


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def make_session(model: onnx.ModelProto | str | os.PathLike, threads: int):
    """The timing session: onnxruntime's graph optimizations on, as a user runs the model."""
    return session(model, threads=threads, optimize=True, log_level=3)


def measure_latency(
    model: onnx.ModelProto | str | os.PathLike,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    batch: int | None = None,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    min_seconds: float = 0.0,
    session=None,
    progress: Callable[[str], None] | None = None,
) -> LatencyResult:
    """Time `runs` single inferences (after `warmup`) with all inputs bound to shapes.

    With `min_seconds`, keeps running until that much time was measured too.
    """
    threads = threads or default_threads()
    sess = session or make_session(model, threads)
    feeds = random_inputs(sess, shapes=input_shapes, normal=True)[0]
    what = f"batch {batch}" if batch is not None else "latency"
    for i in range(warmup):
        if progress:
            progress(f"warming up ({what}) {i + 1}/{warmup}")
        sess.run(None, feeds)
    result = LatencyResult(batch, threads, warmup, 0)
    spent = 0.0
    while result.runs < runs or spent < min_seconds:
        if progress and result.runs % 5 == 0:
            progress(f"benchmarking ({what}) {result.runs + 1}/{runs}")
        t0 = time.perf_counter()
        sess.run(None, feeds)
        dt = time.perf_counter() - t0
        result.times.append(dt)
        result.runs += 1
        spent += dt
    return result
