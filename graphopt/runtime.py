"""The one place graphopt talks to onnxruntime: sessions, drawn inputs, validity checks.

Every pass, the verifier and the analyses make their sessions here, so that intra-op
spinning is off everywhere (idle threads would otherwise steal the CPU from whatever
runs beside them: a timing, a second session, a parallel trial), one inter-op thread is
used, and a model onnxruntime rejects becomes one line naming the reason.

    session(model, threads=1, optimize=False)   an InferenceSession on the CPU provider
    options(threads, optimize, log_level)       the SessionOptions behind it
    run(model_or_session, feeds)                outputs for each feed dict
    check(model)                                None if onnx.checker and onnxruntime accept it
    random_inputs(model, n, seed, shapes, ranges)  feed dicts of the model's graph inputs
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from .errors import GraphoptError

ModelLike = "onnx.ModelProto | bytes | str | os.PathLike"


class RuntimeRejected(GraphoptError):
    """onnxruntime refused to load a model; the message is its first line."""


def options(threads: int = 1, *, optimize: bool = False, log_level: int = 4):
    """SessionOptions with spinning off and one inter-op thread. `optimize=False`
    disables onnxruntime's own graph rewrites (the model runs as written)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = log_level
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def _source(model) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return os.fspath(model)


def session(model, *, threads: int = 1, optimize: bool = False, log_level: int = 4, so=None):
    """An InferenceSession on the CPU provider. Raises RuntimeRejected (one line) when
    onnxruntime cannot load the model."""
    import onnxruntime as ort

    so = so if so is not None else options(threads, optimize=optimize, log_level=log_level)
    try:
        return ort.InferenceSession(_source(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeRejected(f"onnxruntime cannot load the model: {first[:300]}") from e


def run(model_or_session, feeds: Iterable[Mapping[str, np.ndarray]], *, optimize: bool = True,
        threads: int = 2) -> list[list[np.ndarray]]:
    """All outputs for each feed dict (a session is made when given a model)."""
    sess = model_or_session
    if not hasattr(sess, "run"):
        sess = session(model_or_session, threads=threads, optimize=optimize)
    return [sess.run(None, dict(f)) for f in feeds]


def check(model: onnx.ModelProto) -> str | None:
    """None if the model passes onnx.checker and loads in onnxruntime, else the reason
    in one line ("onnx.checker: ..." or "onnxruntime: ...")."""
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - every checker failure is a reason
        return f"onnx.checker: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
    try:
        session(model, threads=1, optimize=True)
    except RuntimeRejected as e:
        return "onnxruntime: " + str(e).split(": ", 1)[-1][:200]
    return None


def random_inputs(model: onnx.ModelProto, n: int = 1, *, seed: int = 0,
                  shapes: Mapping[str, Sequence[int]] | None = None,
                  ranges: Mapping[str, tuple[float, float]] | None = None) -> list[dict]:
    """`n` feed dicts for the model's graph inputs (initializers listed as inputs are
    skipped). Symbolic dims are 1 unless `shapes` binds the input; floats are uniform in
    the input's range (default [0, 1)), integers in [lo, hi), bools all true."""
    shapes, ranges = shapes or {}, ranges or {}
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = []
    for _ in range(n):
        feed = {}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            shape = tuple(shapes.get(vi.name) or (d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim))
            dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            lo, hi = ranges.get(vi.name, (0.0, 1.0))
            if np.issubdtype(dt, np.floating):
                feed[vi.name] = rng.uniform(lo, hi, shape).astype(dt)
            elif dt == np.bool_:
                feed[vi.name] = np.ones(shape, dt)
            else:
                feed[vi.name] = rng.integers(int(lo), max(int(hi), int(lo) + 1), shape).astype(dt)
        out.append(feed)
    return out
