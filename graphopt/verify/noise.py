"""The float noise of one input: how far a model's outputs move when its weights are
rounded differently.

A float rewrite (Conv-BN folding, a fused Gemm) changes the rounding of the weights and
the order of the arithmetic, not the math. On most inputs that moves the outputs by far
less than the float contract's tolerance; on an ill-conditioned input (huge magnitudes
cancelling before a Sigmoid, say) it moves them by more, without any bug. To tell the
two apart, the reference model is run once more with every float weight perturbed by up
to one unit in the last place (a random relative change in [-eps, eps]): the distance
of that model's output from the reference is the input's noise floor. The float inputs of the example are moved by up to one ulp the same way (a rewrite
that rounds an early intermediate differently moves what follows like that).

The verdict is calibrated on that floor in both directions (graphopt.verify.compare):
an error up to the contract's small rtol (1e-6 of the output's largest magnitude) passes
without it; above, an output passes only within NOISE_FACTOR times its input's floor.
So a change well above float noise fails even when it is tiny (a weight moved by 0.5%
of its tensor's range, 2e-5 of the output), and a legitimate rewrite on an
ill-conditioned input passes even when its error is large. A real bug (a dropped bias,
a swapped channel, a flipped sign) moves an output by about its own magnitude, far
above the floor of the inputs it fails on -- and every example must pass, so the
well-conditioned draws keep their full power. NOISE_FACTOR is calibrated by
benchmarks/bench_verify_power.py (legitimate rewrites by onnxsim, onnxruntime's
EXTENDED graph optimizations and graphopt's float passes land below 2x their floor on
the models measured there).

`NoiseSource` builds the perturbed model once (on first need) and caches its runs per
input, so the verification instrument shares one across the checks of a pipeline: the
same drawn inputs cost one noise run each, however many passes are checked.

Only tensors of at least MIN_ELEMENTS values are perturbed: short float vectors are
often shapes in disguise (Resize scales, Range bounds), where one ulp changes the
shape of the result instead of its values.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

NOISE_FACTOR = 4.0
MIN_ELEMENTS = 16
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def _perturbable(t: onnx.TensorProto) -> bool:
    n = 1
    for d in t.dims:
        n *= d
    return t.data_type in _FLOATS and t.data_location != onnx.TensorProto.EXTERNAL and n >= MIN_ELEMENTS


def perturbable_weights(model: onnx.ModelProto) -> int:
    """How many tensors perturb_weights moves."""
    ts = list(model.graph.initializer) + [a.t for n in model.graph.node
                                          if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                                          for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    return sum(_perturbable(t) for t in ts)


def _perturbable_feed(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.size >= MIN_ELEMENTS


def perturb_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of `model` whose float initializers and Constant values (main graph, at
    least MIN_ELEMENTS values) are multiplied by (1 + u * eps), u uniform in [-1, 1]."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    tensors = list(out.graph.initializer)
    for node in out.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            tensors.extend(a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR)
    for t in tensors:
        if t.data_type not in _FLOATS or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        w = numpy_helper.to_array(t)
        if w.size < MIN_ELEMENTS:
            continue
        eps = np.finfo(w.dtype).eps
        moved = (w.astype(np.float64) * (1.0 + rng.uniform(-eps, eps, w.shape))).astype(w.dtype)
        t.CopyFrom(numpy_helper.from_array(moved, t.name))
    return out


def noise_floor(reference: np.ndarray, perturbed: np.ndarray) -> float:
    """max |perturbed - reference| over the elements finite in both (0 if none)."""
    a, b = np.asarray(reference, np.float64), np.asarray(perturbed, np.float64)
    if a.shape != b.shape:
        return 0.0
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0


def perturb_feeds(feeds: dict, seed: int = 0) -> dict:
    """A copy of `feeds` whose float arrays of at least MIN_ELEMENTS values are moved by
    up to one ulp like perturb_weights moves weights (other values unchanged)."""
    rng = np.random.default_rng([seed, 0x6E6F697365])
    out = {}
    for name in sorted(feeds):
        a = feeds[name]
        if _perturbable_feed(a):
            eps = np.finfo(a.dtype).eps
            a = (a.astype(np.float64) * (1.0 + rng.uniform(-eps, eps, a.shape))).astype(a.dtype)
        out[name] = a
    return out


class NoiseSource:
    """The float noise of one model's inputs, from weight- and input-perturbed copies.

    `reference` runs the model itself (its outputs are usually already cached: the
    check's own reference runs). Perturbed copy k (seed k) is built on first need; the
    caller asks for the second only when the first floor does not clear an output (one
    random perturbation can land small) and judges on the mean of the two. If a copy
    cannot be built (onnxruntime refusing it), `available` turns False and the caller
    judges without a floor (and says so)."""

    DRAWS = 2

    def __init__(self, model: onnx.ModelProto, reference, threads: int = 1) -> None:
        self.model, self.reference, self.threads = model, reference, threads
        self._runners: dict[int, object] = {}
        self._weights: int | None = None
        self.available = reference is not None and getattr(reference, "backend", "") == "onnxruntime"
        self.why_not = "" if self.available else "the reference runs on onnx's reference evaluator"
        self.runs = 0
        self._lock = threading.Lock()

    def _perturbed(self, k: int):
        from .runner import Runner

        with self._lock:
            if k not in self._runners and self.available:
                try:
                    runner = Runner(perturb_weights(self.model, seed=k), threads=self.threads)
                except Exception as e:  # noqa: BLE001 - no floor then; the caller says so
                    runner = None
                    self.why_not = f"no weight-perturbed model ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
                if runner is None or runner.backend != "onnxruntime":
                    self.available = False
                    self.why_not = self.why_not or "onnxruntime cannot run the weight-perturbed model"
                    return None
                self._runners[k] = runner
            return self._runners.get(k)

    def floors(self, feeds: dict, k: int = 0) -> list[float] | None:
        """Per output, max |perturbed_k - reference| on this input; None if unavailable
        or either model rejects the input."""
        from .runner import InvalidInput

        if self._weights is None:
            self._weights = perturbable_weights(self.model)
        if not self._weights and not any(_perturbable_feed(v) for v in feeds.values()):
            # nothing to round differently: a zero floor would mean "no noise" where it
            # was never measured; judged without a floor (the caller says so)
            self.why_not = "no float weight or input of 16+ values to perturb"
            return None
        runner = self._perturbed(k) if self.available else None
        if runner is None:
            return None
        try:
            ref = self.reference.run(feeds)
            moved = runner.run(perturb_feeds(feeds, seed=k))
        except InvalidInput as e:
            log.debug("no noise floor on this input: %s", e)
            return None
        self.runs += 1
        return [noise_floor(a, b) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else 0.0
                for a, b in zip(ref, moved)]
