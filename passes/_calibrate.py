"""Calibration for static INT8: collect activation statistics and choose ranges.

Methods (per tensor):
  minmax      the observed [min, max]. No clipping; the default, robust with few samples.
  percentile  clip to the p-th percentile of |x| (two-sided: the (100-p)/p percentiles).
  entropy     TensorRT-style: the clip threshold minimizing KL(P || Q) between the
              histogram and its 128-level quantized version.

Statistics come from running the FP32 model in onnxruntime with the wanted tensors
added as outputs: one pass for min/max, and for percentile/entropy a second pass
filling a fixed-range histogram.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from graphopt import progress
from graphopt.runtime import session

log = logging.getLogger(__name__)

BINS = 2048


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the tensors `names` (those not outputs already)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


def session_with_outputs(model: onnx.ModelProto, names: list[str], threads: int = 2, *,
                         optimize: bool = False):
    """An onnxruntime session that also returns the intermediate tensors `names` (with
    graph optimizations off by default, so that every tensor still exists)."""
    return session(with_outputs(model, names), threads=threads, optimize=optimize, log_level=3)


def collect(model: onnx.ModelProto, names: list[str], samples: list[dict], method: str = "minmax",
            percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """Run the model on the samples and return a range (lo, hi) for each tensor name."""
    if not names:
        return {}
    sess = session_with_outputs(model, names)
    outs = [o.name for o in sess.get_outputs()]
    idx = {n: outs.index(n) for n in names}
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    samples = list(samples)
    runs = len(samples) * (1 if method == "minmax" else 2)   # a histogram method reads them twice
    with progress.task("calibrating (batches)", runs) as counted:
        for s in samples:
            res = sess.run(None, s)
            for n in names:
                a = res[idx[n]]
                if a.size and np.issubdtype(a.dtype, np.floating):
                    lo[n] = min(lo[n], float(np.min(a)))
                    hi[n] = max(hi[n], float(np.max(a)))
            counted.advance()
        ranges = {n: (lo[n], hi[n]) if np.isfinite(lo[n]) else (0.0, 0.0) for n in names}
        if method == "minmax":
            return ranges
        # second pass: histograms of |x| over [0, max|x|], plus the sign structure
        amax = {n: max(abs(ranges[n][0]), abs(ranges[n][1])) or 1e-8 for n in names}
        hists = {n: np.zeros(BINS, np.float64) for n in names}
        for s in samples:
            res = sess.run(None, s)
            for n in names:
                a = np.abs(res[idx[n]].astype(np.float32, copy=False)).ravel()
                hists[n] += np.histogram(a, bins=BINS, range=(0.0, amax[n]))[0]
            counted.advance()
    out = {}
    for n in names:
        if method == "percentile":
            t = percentile_threshold(hists[n], amax[n], percentile)
        elif method == "entropy":
            t = entropy_threshold(hists[n], amax[n])
        else:
            raise ValueError(method)
        l, h = ranges[n]
        out[n] = (max(l, -t), min(h, t))
    return out


def percentile_threshold(hist: np.ndarray, amax: float, p: float) -> float:
    """The value below which p percent of |x| lies (from a histogram over [0, amax])."""
    c = np.cumsum(hist)
    if c[-1] == 0:
        return amax
    i = int(np.searchsorted(c, c[-1] * p / 100.0))
    return float(amax * min(i + 1, len(hist)) / len(hist))


def entropy_threshold(hist: np.ndarray, amax: float, levels: int = 128) -> float:
    """TensorRT's KL-divergence calibration on a histogram of |x| over [0, amax]."""
    n = len(hist)
    if hist.sum() == 0:
        return amax
    best, best_i = np.inf, n
    for i in range(levels, n + 1, 16):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers clipped into the last bin
        nz = p > 0
        # quantize the first i bins into `levels` groups, spreading each group's mass
        # evenly over its non-empty bins
        edges = np.linspace(0, i, levels + 1).astype(int)
        q = np.zeros(i)
        src = hist[:i]
        for a, b in zip(edges[:-1], edges[1:]):
            if b <= a:
                continue
            seg_nz = src[a:b] > 0
            k = seg_nz.sum()
            if k:
                q[a:b][seg_nz] = src[a:b].sum() / k
        q[i - 1] += 0  # mass beyond the clip is not representable in Q
        if q[nz].min(initial=1) <= 0:
            q = np.where(nz & (q <= 0), 1e-12, q)
        pn = p / p.sum()
        qn = q / max(q.sum(), 1e-30)
        kl = float(np.sum(pn[nz] * np.log(pn[nz] / np.maximum(qn[nz], 1e-30))))
        if kl < best:
            best, best_i = kl, i
    return float(amax * best_i / n)


def qparams(lo: float, hi: float, dtype: str = "uint8", symmetric: bool = False) -> tuple[float, int]:
    """Scale and zero point for the range [lo, hi] (widened to include 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if dtype == "uint8":
        qmin, qmax = 0, 255
    else:
        qmin, qmax = -128, 127
    if symmetric:
        m = max(abs(lo), abs(hi))
        if dtype == "uint8":
            scale = (2 * m) / 255.0 if m > 0 else 1.0
            return float(np.float32(scale)), 128
        scale = m / 127.0 if m > 0 else 1.0
        return float(np.float32(scale)), 0
    if hi - lo <= 0:
        return 1.0, (0 if dtype == "uint8" else 0)
    scale = float(np.float32((hi - lo) / (qmax - qmin)))
    zp = int(round(qmin - lo / scale))
    return scale, int(np.clip(zp, qmin, qmax))
