"""Judging a lossy rewrite against its error budget while a pass searches (quant, fp16).

`excess(budget, ref, got)` says how far a candidate's outputs are from breaking the
budget: at most 1.0 means every metric holds. Metrics follow graphopt.verify.contracts:
rel_l2 (worst over samples and outputs, at most), cosine (worst, at least) and top1
(argmax agreement over the last axis pooled over all samples, at least).
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-12


def excess(budget: dict[str, float], ref: list[list], got: list[list]) -> float:
    """max over metrics of (shortfall / allowed shortfall); inf on NaN/inf mismatches."""
    worst = 0.0
    agree = rows = 0
    for outs_a, outs_b in zip(ref, got):
        for a, b in zip(outs_a, outs_b):
            a, b = np.asarray(a), np.asarray(b)
            if not np.issubdtype(a.dtype, np.floating):
                continue
            fa, fb = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
            if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
                if np.array_equal(fa, fb, equal_nan=True):
                    continue
                return float("inf")
            na, nb = float(np.linalg.norm(fa)), float(np.linalg.norm(fb))
            for metric, bound in budget.items():
                if metric == "rel_l2":
                    d = float(np.linalg.norm(fa - fb))
                    val = d / na if na > 0 else (0.0 if d == 0 else float("inf"))
                    worst = max(worst, val / max(bound, _TINY))
                elif metric == "cosine":
                    cos = float(fa @ fb / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
                    worst = max(worst, (1.0 - cos) / max(1.0 - bound, _TINY))
                elif metric == "top1" and a.ndim > 0 and a.shape[-1] >= 2:
                    ra, rb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
                    agree += int(np.count_nonzero(ra.argmax(-1) == rb.argmax(-1)))
                    rows += ra.shape[0]
    if "top1" in budget and rows:
        worst = max(worst, (1.0 - agree / rows) / max(1.0 - budget["top1"], _TINY))
    return worst


def describe(budget: dict[str, float]) -> str:
    return ", ".join(f"{m} {'<=' if m == 'rel_l2' else '>='} {v:g}" for m, v in budget.items())
