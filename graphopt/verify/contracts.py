"""Contracts: how close a pass's output must stay to its input's.

exact   every output bit-identical in value (NaN matches NaN; shapes and dtypes equal).
float   per output, elementwise |a - b| <= atol + rtol * max|a| where max|a| is the
        largest finite magnitude of the reference output a (defaults rtol=1e-6,
        atol=1e-8: a few ulps of float32), or else within NOISE_FACTOR times the
        input's own float noise: how far the output moves when the weights and inputs
        are rounded differently by one ulp (graphopt.verify.noise; judged by the
        comparison, which runs the noise model only for outputs past the first bound).
        So the verdict is noise-calibrated both ways: a change well above float noise
        fails even at 1e-5 of the output (one weight moved by 0.5% of its tensor's
        range), a legitimate rewrite of an ill-conditioned input passes even when its
        error is large. Without a noise floor (a model onnxruntime cannot run) the
        bound is FALLBACK_RTOL (1e-4), and the comparison says so. NaN/inf must sit at
        the same places. bfloat16 / float8 outputs count as floats (their own eps).
lossy   a budget on metrics of the user's or the pass's choosing (worst case over
        examples and float outputs): rel_l2 = ||a-b|| / ||a|| (at most), cosine =
        cos(a, b) (at least), top1 = share of rows (last axis) whose argmax agrees (at
        least; pooled over all examples; where the reference row ties, any of its
        maxima agrees). Default budget {"rel_l2": 0.05}. An output that is zero within
        atol (||a|| below atol * sqrt(size)) is not divided by: rel_l2 takes that floor
        as its denominator, and cosine is 1 when ||a-b|| is below it.

Integer and boolean outputs must match exactly under every contract except lossy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import GraphoptError

CONTRACTS = ("exact", "float", "lossy")
METRICS = ("rel_l2", "cosine", "top1")
DEFAULT_RTOL = 1e-6
FALLBACK_RTOL = 1e-4    # the float bound when no noise floor can be measured
DEFAULT_ATOL = 1e-6     # lossy metrics: outputs below this (per element) count as zero
FLOAT_ATOL = 1e-8       # the float contract's default: the bound is relative (rtol), atol only
                        # spares outputs that are zero; 1e-6 would hide 3e-5 of a 0.03 output
DEFAULT_BUDGET = {"rel_l2": 0.05}


@dataclass
class Contract:
    kind: str = "float"
    rtol: float = DEFAULT_RTOL
    atol: float | None = None   # default: FLOAT_ATOL for float, DEFAULT_ATOL otherwise
    budget: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.atol is None:
            self.atol = FLOAT_ATOL if self.kind == "float" else DEFAULT_ATOL
        if self.kind not in CONTRACTS:
            raise GraphoptError(f"unknown contract '{self.kind}' (expected one of {', '.join(CONTRACTS)})")
        if self.kind == "lossy":
            self.budget = dict(self.budget or DEFAULT_BUDGET)
            for m in self.budget:
                if m not in METRICS:
                    raise GraphoptError(f"unknown lossy metric '{m}' (expected one of {', '.join(METRICS)})")

    def describe(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind == "float":
            return f"float (rtol {self.rtol:g}, atol {self.atol:g})"
        return "lossy (" + ", ".join(f"{m} {'≤' if m == 'rel_l2' else '≥'} {v:g}" for m, v in self.budget.items()) + ")"


@dataclass
class OutputCheck:
    """The comparison of one output on one example."""

    name: str
    ok: bool
    error: float        # exact/float: max |a-b| ; lossy: the worst metric's value
    tolerance: float    # the bound that error was held to
    measure: str        # what `error` is: "max abs err", "rel_l2", "cosine", "top1", "shape"...
    detail: str = ""
    # for lossy top1 pooling: (agreeing rows, rows)
    top1: tuple[int, int] | None = None
    scale: float = 0.0  # float contract: the largest finite magnitude of the reference output

    @property
    def margin(self) -> float:
        """How far past its bound the check is (>1 fails), to pick the worst output."""
        if self.measure in ("cosine", "top1"):
            return (1 - self.error) / max(1 - self.tolerance, 1e-12)
        if self.measure in ("shape", "dtype", "nan", "crash", "rejected", "kind"):
            return float("inf")
        return self.error / self.tolerance if self.tolerance > 0 else (0.0 if self.error == 0 else float("inf"))


def is_float_dtype(dtype: np.dtype) -> bool:
    """numpy floats and ml_dtypes' (bfloat16, float8_*, float4_*)."""
    dtype = np.dtype(dtype)
    return bool(np.issubdtype(dtype, np.floating)) or (dtype.kind in "Vf" and "float" in dtype.name)


def _is_exact_dtype(a: np.ndarray) -> bool:
    return not is_float_dtype(a.dtype) and not np.issubdtype(a.dtype, np.complexfloating)


def check_output(name: str, a: np.ndarray, b: np.ndarray, contract: Contract) -> OutputCheck:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return OutputCheck(name, False, float("inf"), 0.0, "shape", f"shape {list(b.shape)} != {list(a.shape)}")
    if a.dtype != b.dtype and not (contract.kind == "lossy" and is_float_dtype(a.dtype) and is_float_dtype(b.dtype)):
        return OutputCheck(name, False, float("inf"), 0.0, "dtype", f"dtype {b.dtype} != {a.dtype}")
    if a.dtype == object or a.dtype.kind in "US":
        ok = bool(np.array_equal(a, b))
        return OutputCheck(name, ok, 0.0 if ok else 1.0, 0.0, "mismatches")
    if a.dtype.kind == "V" or (is_float_dtype(a.dtype) and not np.issubdtype(a.dtype, np.floating)):
        # ml_dtypes (bfloat16, float8, int4...): compared through their exact widening
        wide = np.float32 if is_float_dtype(a.dtype) else np.int16
        a, b = a.astype(wide), b.astype(wide)
    if contract.kind == "lossy":
        return _check_lossy(name, a, b, contract)
    if _is_exact_dtype(a) or contract.kind == "exact":
        if _is_exact_dtype(a):
            diff = a != b
            err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if diff.any() else 0.0
        else:
            both_nan = np.isnan(a) & np.isnan(b)
            diff = (a != b) & ~both_nan
            with np.errstate(invalid="ignore", over="ignore"):
                d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            err = float(np.nanmax(np.where(diff, d, 0.0))) if diff.any() else 0.0
            if diff.any() and not np.isfinite(err):
                err = float("inf")
        n = int(np.count_nonzero(diff))
        return OutputCheck(name, n == 0, err, 0.0, "max abs err",
                           f"{n} of {a.size} elements differ" if n else "")
    # float contract
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(fa), np.isnan(fb)
    inf_a, inf_b = np.isinf(fa), np.isinf(fb)
    if (nan_a != nan_b).any() or (inf_a != inf_b).any() or (fa[inf_a] != fb[inf_a]).any():
        n = int(np.count_nonzero((nan_a != nan_b) | (inf_a != inf_b)))
        return OutputCheck(name, False, float("inf"), 0.0, "nan", f"NaN/inf at different places ({n} elements)")
    finite = ~(nan_a | inf_a)
    if not finite.any():
        return OutputCheck(name, True, 0.0, contract.atol, "max abs err")
    scale = float(np.max(np.abs(fa[finite])))
    tol = contract.atol + contract.rtol * scale
    err = float(np.max(np.abs(fa[finite] - fb[finite])))
    return OutputCheck(name, err <= tol, err, tol, "max abs err", scale=scale)


def rel_l2(fa: np.ndarray, fb: np.ndarray, atol: float = DEFAULT_ATOL) -> float:
    """||a-b|| / ||a|| of two flat float64 arrays, the denominator at least atol*sqrt(n)."""
    num = float(np.linalg.norm(fa - fb))
    den = max(float(np.linalg.norm(fa)), atol * np.sqrt(fa.size))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def cosine(fa: np.ndarray, fb: np.ndarray, atol: float = DEFAULT_ATOL) -> float:
    """cos(a, b) of two flat float64 arrays; 1 when they differ by less than atol*sqrt(n)."""
    if float(np.linalg.norm(fa - fb)) <= atol * np.sqrt(fa.size):
        return 1.0
    na, nb = float(np.linalg.norm(fa)), float(np.linalg.norm(fb))
    return float(fa @ fb / (na * nb)) if na > 0 and nb > 0 else 0.0


def top1_agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, int] | None:
    """(rows of the last axis where b's argmax is one of a's maxima, rows), or None when
    the output has no class axis."""
    if a.ndim == 0 or a.shape[-1] < 2:
        return None
    ra, rb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    picked = ra[np.arange(ra.shape[0]), rb.argmax(-1)]
    return int(np.count_nonzero(picked == ra.max(-1))), ra.shape[0]


def _check_lossy(name: str, a: np.ndarray, b: np.ndarray, contract: Contract) -> OutputCheck:
    fa, fb = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        if np.array_equal(fa, fb, equal_nan=True):
            return OutputCheck(name, True, 0.0, 0.0, "rel_l2")
        return OutputCheck(name, False, float("inf"), 0.0, "nan", "NaN/inf in outputs differ")
    worst: OutputCheck | None = None
    top1 = None
    for metric, bound in contract.budget.items():
        if metric == "rel_l2":
            val = rel_l2(fa, fb, contract.atol)
            c = OutputCheck(name, val <= bound, val, bound, "rel_l2")
        elif metric == "cosine":
            val = cosine(fa, fb, contract.atol)
            c = OutputCheck(name, val >= bound, val, bound, "cosine")
        else:  # top1: judged pooled over examples by the caller; per example it is informative
            top1 = top1_agreement(a, b)
            if top1 is None:
                continue
            c = OutputCheck(name, True, top1[0] / top1[1], bound, "top1")
        if worst is None or (not c.ok and worst.ok) or (c.ok == worst.ok and c.margin > worst.margin):
            worst = c
    if worst is None:
        worst = OutputCheck(name, True, 0.0, 0.0, "rel_l2")
    worst.top1 = top1
    return worst
