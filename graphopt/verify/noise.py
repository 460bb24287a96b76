"""The float noise of one input: how far a model's outputs move when its weights are
rounded differently.

A float rewrite (Conv-BN folding, a fused Gemm) changes the rounding of the weights and
the order of the arithmetic, not the math. On most inputs that moves the outputs by far
less than the float contract's tolerance; on an ill-conditioned input (huge magnitudes
cancelling before a Sigmoid, say) it moves them by more, without any bug. To tell the
two apart, the reference model is run once more with every float weight perturbed by up
to one unit in the last place (a random relative change in [-eps, eps]): the distance
of that model's output from the reference is the input's noise floor. A check that fails
its tolerance still passes when its error stays within NOISE_FACTOR times that floor.
A real bug (a dropped bias, a swapped channel, a flipped sign) moves an output by about
its own magnitude, far above the floor of the inputs it fails on -- and every example
must pass, so the well-conditioned draws keep their full power.

Only tensors of at least MIN_ELEMENTS values are perturbed: short float vectors are
often shapes in disguise (Resize scales, Range bounds), where one ulp changes the
shape of the result instead of its values.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

NOISE_FACTOR = 4.0
MIN_ELEMENTS = 16
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


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
