"""What runs on Ray workers: optimize one model (batch), build and score one trial, time one
trial against the input model. Plain functions; batch/search wrap them with `ray.remote`.

Each returns a dict with `ok`, a one-line `reason` when not ok, the node it ran on, and its
wall-clock interval (`t0`, `t1`, seconds since the epoch) so a run can show which node did
what and when.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from typing import Any, Callable

import numpy as np

from .cluster import node_info


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    from ..errors import GraphoptError

    if isinstance(e, GraphoptError):
        return first or type(e).__name__
    if isinstance(e, MemoryError):
        return "out of memory"
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def optimize_one(src: str, dst: str, spec: str, ctx_fields: dict, verify: bool) -> dict:
    """`graphopt batch`: optimize one model file into `dst`."""
    from .. import api
    from ..pipeline import PassContext

    t0 = time.time()
    out: dict[str, Any] = {"input": src, "output": dst, **node_info(), "t0": t0}
    try:
        _, report = api.optimize_file(src, dst, spec, ctx=PassContext(**ctx_fields), verify=verify)
        out.update(ok=True, reason="", nodes_before=report.nodes_before,
                   nodes_after=report.nodes_after, bytes_before=report.bytes_before,
                   bytes_after=report.bytes_after, size=os.path.getsize(dst),
                   seconds=report.seconds)
    except Exception as e:  # every failure is recorded with its reason; the batch goes on
        out.update(ok=False, reason=one_line(e), debug=traceback.format_exc(limit=5))
    out["t1"] = time.time()
    return out


def model_outputs(model_bytes: bytes, samples: list[dict]) -> list[list[np.ndarray]]:
    import onnx

    from ..analysis.latency import make_session

    sess = make_session(onnx.load_from_string(model_bytes), 1)
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in s.items() if k in names}) for s in samples]


def agreement(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> float:
    """Default accuracy: top-1 agreement with the input model for a classifier output
    (last axis >= 2 classes, 2-D), else the cosine similarity of the outputs."""
    from ..verify.contracts import cosine, top1_agreement

    first_ref = reference[0][0] if reference and reference[0] else None
    if first_ref is not None and first_ref.ndim == 2 and first_ref.shape[-1] >= 2:
        hit = total = 0
        for ref, out in zip(reference, outputs):
            counted = top1_agreement(np.asarray(ref[0]), np.asarray(out[0]))
            if counted is None:
                break
            hit, total = hit + counted[0], total + counted[1]
        else:
            return hit / total if total else 1.0
    fa = np.concatenate([np.asarray(a, np.float64).ravel() for ref in reference for a in ref])
    fb = np.concatenate([np.asarray(b, np.float64).ravel() for out in outputs for b in out])
    return float(cosine(fa, fb))


def _score(model_bytes: bytes, metric: Callable[[str], float] | None, samples, reference) -> float:
    if metric is None:
        return agreement(reference, model_outputs(model_bytes, samples))
    with tempfile.TemporaryDirectory(prefix="graphopt-trial-") as d:
        path = os.path.join(d, "model.onnx")
        with open(path, "wb") as f:
            f.write(model_bytes)
        value = float(metric(path))
    if not np.isfinite(value):
        raise ValueError(f"--metric returned {value}")
    return value


def reference(model_bytes: bytes, samples: list[dict], metric) -> dict:
    """The input model's outputs on the samples and its metric (once per search)."""
    t0 = time.time()
    outputs = model_outputs(model_bytes, samples) if metric is None else None
    score = 1.0 if metric is None else _score(model_bytes, metric, samples, None)
    return {"outputs": outputs, "score": score, **node_info(), "t0": t0, "t1": time.time()}


def build_trial(model_bytes: bytes, spec: str, ctx_fields: dict, verify: bool, metric,
                reference_outputs) -> tuple[dict, bytes | None]:
    """Optimize the input model with one trial's spec and score it. Returns (info, model)."""
    import onnx

    from .. import api

    t0 = time.time()
    info: dict[str, Any] = {"spec": spec, **node_info(), "t0": t0}
    data = None
    try:
        if spec:
            proto, report = api.optimize(onnx.load_from_string(model_bytes), spec, verify=verify,
                                         return_report=True, **ctx_fields)
            data = proto.SerializeToString()
            info.update(nodes_before=report.nodes_before, nodes_after=report.nodes_after)
        else:  # every pass skipped: the trial is the input model
            data = model_bytes
        info["build_seconds"] = time.time() - t0
        samples = ctx_fields.get("samples") or []
        info["accuracy"] = _score(data, metric, samples, reference_outputs)
        info.update(ok=True, reason="", size=len(data))
    except Exception as e:  # a crashing trial is recorded, never kills the search
        info.update(ok=False, reason=one_line(e), debug=traceback.format_exc(limit=5))
        data = None
    info["t1"] = time.time()
    return info, data


def measure_trial(baseline_bytes: bytes, model_bytes: bytes, feeds: dict, threads: int,
                  rounds: int, runs_per_block: int) -> dict:
    """Time one trial against the input model (the caller holds the node's measure slot)."""
    import onnx

    from .measure import paired_latency

    t0 = time.time()
    info: dict[str, Any] = {**node_info(), "t0": t0}
    try:
        lat = paired_latency(onnx.load_from_string(baseline_bytes), onnx.load_from_string(model_bytes),
                             feeds, threads=threads, rounds=rounds, runs_per_block=runs_per_block)
        info.update(ok=True, reason="", **lat.as_dict())
    except Exception as e:
        info.update(ok=False, reason=one_line(e))
    info["t1"] = time.time()
    return info
