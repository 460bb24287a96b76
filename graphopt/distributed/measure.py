"""Paired, interleaved latency: a candidate model timed against the input model.

`graphopt.analysis.latency.measure_latency` times one model; a search compares each trial
with the input model on the same machine, so here both sessions are made up front (same
threads, spinning off, via `analysis.latency.make_session`) and timed in alternating blocks
(A B, then B A, ...). Slow drift of the machine (other load, frequency) hits both alike; the
reported ratio is the median over rounds of block-median(candidate) / block-median(input).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..analysis.latency import make_session


@dataclass
class PairedLatency:
    baseline_ms: float  # median single-run latency of the input model
    candidate_ms: float  # same for the candidate
    ratio: float  # median over rounds of candidate/baseline (< 1: faster)
    ratio_spread: float  # interquartile range of the per-round ratios
    rounds: int
    runs_per_block: int
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_latency(baseline, candidate, feeds: dict, *, threads: int = 1, rounds: int = 10,
                   runs_per_block: int = 10, warmup: int = 5, min_seconds: float = 0.0,
                   baseline_session=None) -> PairedLatency:
    """Time `candidate` against `baseline` (ModelProto, bytes-free path or ModelProto)."""
    sa = baseline_session or make_session(baseline, threads)
    sb = make_session(candidate, threads)
    names_a = {i.name for i in sa.get_inputs()}
    names_b = {i.name for i in sb.get_inputs()}
    fa = {k: v for k, v in feeds.items() if k in names_a}
    fb = {k: v for k, v in feeds.items() if k in names_b}
    for _ in range(warmup):
        sa.run(None, fa)
        sb.run(None, fb)

    def block(sess, f) -> list[float]:
        out = []
        for _ in range(runs_per_block):
            t0 = time.perf_counter()
            sess.run(None, f)
            out.append(time.perf_counter() - t0)
        return out

    all_a: list[float] = []
    all_b: list[float] = []
    ratios: list[float] = []
    start = time.perf_counter()
    r = 0
    while r < rounds or (time.perf_counter() - start) < min_seconds:
        if r % 2 == 0:
            ta = block(sa, fa)
            tb = block(sb, fb)
        else:
            tb = block(sb, fb)
            ta = block(sa, fa)
        all_a += ta
        all_b += tb
        ratios.append(float(np.median(tb) / np.median(ta)))
        r += 1
    q1, q3 = np.percentile(ratios, [25, 75])
    return PairedLatency(
        baseline_ms=float(np.median(all_a)) * 1e3, candidate_ms=float(np.median(all_b)) * 1e3,
        ratio=float(np.median(ratios)), ratio_spread=float(q3 - q1), rounds=r,
        runs_per_block=runs_per_block, threads=threads,
    )
