"""Reference runners: onnxruntime with its graph optimizations off, else onnx's
reference evaluator, else none (the caller skips with a visible warning)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx

from .._proto import copy_fields
from ..runtime import RuntimeRejected, SessionRecipe, first_line

log = logging.getLogger(__name__)


class RunnerUnavailable(Exception):
    """No backend can run this model."""


class InvalidInput(Exception):
    """The model rejected an input (shape or value outside what it accepts)."""


class Runner:
    """Runs one model many times. `backend` is 'onnxruntime' or 'onnx-reference'.
    `note` says why the fallback was used, when it was.

    Thread-safe: two threads asking for the same input share one run (the second waits
    for the first's outputs), which lets a worker compute reference outputs ahead of
    the check that needs them (graphopt.verify.instrument)."""

    CACHE_BYTES = 256 << 20

    def __init__(self, model: onnx.ModelProto, threads: int = 1, recipe: "SessionRecipe | None" = None) -> None:
        """`recipe`: the session's inputs prepared by SessionRecipe(model, threads), e.g.
        on another thread (the Python-heavy part of building a session)."""
        self.note = ""
        # outputs by input digest: when this runner's model becomes the "before" model of
        # the next check, the same drawn inputs need not run again.
        self._cache: dict[tuple, list[np.ndarray]] = {}
        self._cache_bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[tuple, threading.Event] = {}
        self._serial: threading.Lock | None = None  # set for a backend that is not thread-safe
        self.runs = 0
        self.output_names = [o.name for o in model.graph.output]
        # inputs/outputs whose element type onnxruntime's Python API cannot exchange
        # (bfloat16, float8, int4...) cross the boundary as a wider type (_widen)
        self._wide_in: dict[str, tuple[str, np.dtype]] = {}
        self._narrow_out: dict[int, np.dtype] = {}
        try:
            widened = _widen(model)
            if widened is not None:
                model_for_ort, self._wide_in, self._narrow_out = widened
                recipe = None
            else:
                model_for_ort = model
            self._sess = (recipe or SessionRecipe(model_for_ort, threads)).create()
            self.backend = "onnxruntime"
            return
        except Exception as e:  # noqa: BLE001 - ORT raises several types for unsupported models
            first = e.reason if isinstance(e, RuntimeRejected) else first_line(e)
            self.note = f"onnxruntime cannot run this model ({first[:300]})"
        try:
            from onnx.reference import ReferenceEvaluator

            self._ref = ReferenceEvaluator(model)
            self._serial = threading.Lock()
            self._sess = None
            self.backend = "onnx-reference"
            log.warning("%s; using onnx's reference evaluator instead", self.note)
        except Exception as e:  # noqa: BLE001
            raise RunnerUnavailable(f"{self.note}; onnx's reference evaluator cannot either ({str(e)[:200]})") from e

    def run(self, feeds: dict[str, np.ndarray], cache: bool = True) -> list[np.ndarray]:
        key = _digest(feeds)
        mine = None
        while cache:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    return hit
                pending = self._inflight.get(key)
                if pending is None:
                    mine = self._inflight[key] = threading.Event()
                    break
            pending.wait()  # another thread is running this input; then look again
        try:
            outs = self._execute(feeds)
            size = sum(getattr(o, "nbytes", 0) for o in outs)
            with self._lock:
                if cache and self._cache_bytes + size <= self.CACHE_BYTES:
                    self._cache[key] = outs
                    self._cache_bytes += size
            return outs
        finally:
            if mine is not None:
                with self._lock:
                    self._inflight.pop(key, None)
                mine.set()

    def _execute(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.runs += 1
        try:
            if self._sess is not None:
                if self._wide_in or self._narrow_out:
                    feeds = {(self._wide_in[k][0] if k in self._wide_in else k):
                             (np.asarray(v).astype(self._wide_in[k][1]) if k in self._wide_in else v)
                             for k, v in feeds.items()}
                    outs = self._sess.run(None, feeds)
                    return [np.asarray(o).astype(self._narrow_out[i]) if i in self._narrow_out else o
                            for i, o in enumerate(outs)]
                return self._sess.run(None, feeds)
            with self._serial:
                return [np.asarray(o) for o in self._ref.run(None, feeds)]
        except Exception as e:  # noqa: BLE001
            raise InvalidInput(first_line(e, None)) from e


def _digest(feeds: dict[str, np.ndarray]) -> tuple:
    return tuple((name, _fingerprint(feeds[name])) for name in sorted(feeds))


def _fingerprint(value) -> tuple:
    """A hashable identity of a feed value: an array (any dtype, ml_dtypes' included,
    whose buffers memoryview refuses), a sequence of them, or None (an empty optional)."""
    import hashlib

    if value is None:
        return ("none",)
    if isinstance(value, (list, tuple)):
        return ("seq",) + tuple(_fingerprint(v) for v in value)
    a = np.ascontiguousarray(value)
    if a.dtype == object:
        return ("obj", a.shape, repr(a.tolist()))
    try:
        data = a.data.cast("B") if a.ndim else a.tobytes()
    except (TypeError, ValueError):  # "cannot include dtype 'E' in a buffer"
        data = a.tobytes()
    return (a.shape, str(a.dtype), hashlib.blake2b(data, digest_size=16).digest())


# element types onnxruntime's Python API cannot take or give as numpy arrays, and the
# type they cross the boundary as (every value of the narrow type is exact in it)
_NARROW = {}
for _name, _wide in (("BFLOAT16", "FLOAT"), ("FLOAT8E4M3FN", "FLOAT"), ("FLOAT8E4M3FNUZ", "FLOAT"),
                     ("FLOAT8E5M2", "FLOAT"), ("FLOAT8E5M2FNUZ", "FLOAT"), ("FLOAT8E8M0", "FLOAT"),
                     ("FLOAT4E2M1", "FLOAT"), ("INT4", "INT8"), ("UINT4", "UINT8"), ("INT2", "INT8"),
                     ("UINT2", "UINT8")):
    if hasattr(onnx.TensorProto, _name):
        _NARROW[getattr(onnx.TensorProto, _name)] = getattr(onnx.TensorProto, _wide)


def _widen(model: onnx.ModelProto):
    """(model', {input: (wide name, wide dtype)}, {output index: narrow dtype}) where
    model' takes each narrow-typed graph input as a wide one cast down in the graph, and
    gives each narrow-typed output cast up; None if the model has no such input/output."""
    g = model.graph
    inits = {t.name for t in g.initializer}

    def narrow(vi) -> int | None:
        t = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        return t if t in _NARROW else None

    ins = [vi for vi in g.input if vi.name not in inits and narrow(vi)]
    outs = [i for i, vi in enumerate(g.output) if narrow(vi)]
    if not ins and not outs:
        return None
    out = onnx.ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(g, out.graph, skip=("input", "output", "node"))
    taken = {vi.name for vi in list(g.input) + list(g.output) + list(g.value_info)} | inits
    taken.update(o for n in g.node for o in n.output)

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}{k}"
        taken.add(name)
        return name

    wide_in, narrow_out, cast_in = {}, {}, []
    for vi in g.input:
        t = narrow(vi) if vi.name not in inits else None
        if t is None:
            out.graph.input.append(vi)
            continue
        wide = fresh(f"{vi.name}__graphopt_wide")
        w = out.graph.input.add()
        w.CopyFrom(vi)
        w.name = wide
        w.type.tensor_type.elem_type = _NARROW[t]
        cast_in.append(onnx.helper.make_node("Cast", [wide], [vi.name], to=t))
        wide_in[vi.name] = (wide, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_NARROW[t])))
    out.graph.node.extend(cast_in)
    out.graph.node.extend(g.node)
    for i, vi in enumerate(g.output):
        t = narrow(vi)
        if t is None:
            out.graph.output.append(vi)
            continue
        wide = fresh(f"{vi.name}__graphopt_wide")
        out.graph.node.append(onnx.helper.make_node("Cast", [vi.name], [wide], to=_NARROW[t]))
        w = out.graph.output.add()
        w.CopyFrom(vi)
        w.name = wide
        w.type.tensor_type.elem_type = _NARROW[t]
        narrow_out[i] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t))
    return out, wide_in, narrow_out
