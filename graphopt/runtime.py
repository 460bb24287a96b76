"""The one place graphopt talks to onnxruntime: sessions, drawn inputs, validity checks.

Every pass, the verifier and the analyses make their sessions here, so that intra-op
spinning is off everywhere (idle threads would otherwise steal the CPU from whatever
runs beside them: a timing, a second session, a parallel trial), one inter-op thread is
used, and a model onnxruntime rejects becomes one line naming the reason. (Two
exceptions, each in a process of its own: analysis.memory's measuring process, which must
import onnxruntime alone, and the cost checks' timing process (passes/_timing.Timer), whose
sessions share one spinning pool, as a deployed model's threads spin.)

    session(model, threads=1, optimize=False)   an InferenceSession on the CPU provider
    options(threads, optimize, log_level)       the SessionOptions behind it
    share_threads(threads)                      one global spinning pool (options(shared_pool=True))
    SessionRecipe(model, threads).create()      the same, prepared on one thread and made on
                                                another, big weights shared, not copied
    run(model_or_session, feeds)                outputs for each feed dict
    check(model, load, shapes)                  None if the model is valid, else the reason
    checker_skeleton(model)                     the model onnx.checker sees (weights' bytes out)
    random_inputs(model, n, seed, shapes, ranges, normal)  seeded feed dicts of the graph inputs
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from . import io
from ._proto import copy_fields
from .errors import GraphoptError

log = logging.getLogger(__name__)


class RuntimeRejected(GraphoptError):
    """onnxruntime refused to load a model; the message is its first line (also in
    `reason`, without the "onnxruntime cannot load the model: " prefix)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"onnxruntime cannot load the model: {reason}")
        self.reason = reason


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def options(threads: int = 1, *, optimize: bool = False, log_level: int = 4,
            optimized_path: str | None = None, shared_pool: bool = False):
    """SessionOptions with spinning off and one inter-op thread. `optimize=False`
    disables onnxruntime's own graph rewrites (the model runs as written);
    `optimized_path` makes onnxruntime save the model it optimized there. `shared_pool`:
    the session uses the process's global thread pools (see share_threads) instead."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = log_level
    if shared_pool:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    return so


def share_threads(threads: int) -> str | None:
    """Give this process one global intra-op pool of `threads` threads that spin, as
    onnxruntime's default pools do, for sessions made with options(shared_pool=True).
    Only before the process's first session (passes/_timing.Timer's child process calls
    it first thing). None when done, else why not."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    try:
        _pybind_state.set_global_thread_pool_sizes(threads, 1)
    except AttributeError:  # a private binding: say so plainly if it ever goes away
        return f"onnxruntime {ort.__version__} offers no shared thread pool"
    return None


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
        raise RuntimeRejected(first_line(e)) from e


_SHARE_MIN_BYTES = 1 << 20


class SessionRecipe:
    """What a session (`options(threads, optimize=..., log_level=...)`) is built from.

    Preparing it is Python work (holding the GIL); create() is one call into
    onnxruntime, which runs well on a worker thread while the main thread works. Large
    weights are handed to onnxruntime as arrays over the model's own buffers instead of
    going through one big serialize/parse round trip. Raises if onnxruntime is missing."""

    def __init__(self, model: onnx.ModelProto, threads: int = 1, *, optimize: bool = False,
                 log_level: int = 4) -> None:
        self._settings = dict(threads=threads, optimize=optimize, log_level=log_level)
        self.options = options(**self._settings)
        self._values: list = []
        light = _shared_weights(model, self.options, self._values)
        self.data = light if light is not None else model.SerializeToString()
        self._fallback = model if light is not None else None

    def create(self):
        """The session; RuntimeRejected if onnxruntime cannot load the model."""
        try:
            sess = session(self.data, so=self.options)
        except RuntimeRejected as e:  # retry the plain path before giving up
            if self._fallback is None:
                raise
            log.debug("session over in-memory weights failed (%s); using the serialized model", e.reason)
            model, self._fallback = self._fallback, None
            return session(model, **self._settings)
        sess._graphopt_keep = self._values  # the session reads these buffers
        return sess


def _shared_weights(model: onnx.ModelProto, so, keep: list) -> bytes | None:
    """`model` serialized without its large initializers, which are registered on `so`
    as external initializers over the model's own buffers (kept alive in `keep`).
    None if not worth it or not possible."""
    import onnxruntime as ort

    big = [t for t in model.graph.initializer
           if t.HasField("raw_data") and len(t.raw_data) >= 4096 and t.data_location != onnx.TensorProto.EXTERNAL]
    if sum(len(t.raw_data) for t in big) < _SHARE_MIN_BYTES or np.little_endian is False:
        return None
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    copy_fields(model.graph, light.graph, skip=("initializer",))
    big_names = {t.name for t in big}
    names, values = [], []
    for t in model.graph.initializer:
        if t.name not in big_names:
            light.graph.initializer.append(t)
            continue
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        if dtype.kind not in "fiub" or dtype.itemsize not in (1, 2, 4, 8) or t.data_type == onnx.TensorProto.BFLOAT16:
            light.graph.initializer.append(t)
            continue
        raw = t.raw_data
        arr = np.frombuffer(raw, dtype=dtype).reshape(tuple(t.dims))
        stub = light.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "graphopt-in-memory"), ("offset", "0"), ("length", str(len(raw)))):
            e = stub.external_data.add()
            e.key, e.value = k, v
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(arr))
    so.add_external_initializers(names, values)
    keep.extend(values)
    return light.SerializeToString()


def run(model_or_session, feeds: Iterable[Mapping[str, np.ndarray]], *, optimize: bool = True,
        threads: int = 2) -> list[list[np.ndarray]]:
    """All outputs for each feed dict (a session is made when given a model)."""
    sess = model_or_session
    if not hasattr(sess, "run"):
        sess = session(model_or_session, threads=threads, optimize=optimize)
    return [sess.run(None, dict(f)) for f in feeds]


# ------------------------------------------------------------------------------ validity

TOO_LARGE = "onnx.checker: not checked, the model is over 2 GB even without its large weights"


def check(model: onnx.ModelProto, *, load: bool = True, shapes: bool = False) -> str | None:
    """None if the model is valid, else the first reason in one line:

        "onnx.checker: ..."     onnx.checker on `checker_skeleton(model)` (always);
                                TOO_LARGE when even that is over 2 GB (then unchecked)
        "shape inference: ..."  strict onnx shape inference (with `shapes=True`)
        "onnxruntime: ..."      onnxruntime cannot load it (with `load=True`)
    """
    try:
        sk = checker_skeleton(model)
        if sk.ByteSize() > io.EXTERNAL_DATA_THRESHOLD:
            return TOO_LARGE
        onnx.checker.check_model(sk)
        if shapes:
            try:
                onnx.shape_inference.infer_shapes(sk, strict_mode=True)
            except Exception as e:  # noqa: BLE001 - every inference failure is a reason
                return f"shape inference: {first_line(e, 200)}"
    except Exception as e:  # noqa: BLE001 - every checker failure is a reason
        return f"onnx.checker: {first_line(e, 200)}"
    if load:
        try:
            session(model, threads=1, optimize=True)
        except RuntimeRejected as e:
            return "onnxruntime: " + e.reason[:200]
    return None


_SKELETON_MIN_ELEMENTS = 1024


def checker_skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model for onnx.checker without the payload of its large initializers.

    onnx.checker.check_model serializes the whole model and parses it again in C++,
    which for a BERT-base model costs more than loading and saving it. Large float
    initializers are instead checked here (raw_data length against shape and type)
    and handed to the checker as graph inputs of the same type and shape, which keeps
    every check on the nodes that read them. Models with training_info (whose bindings
    refer to initializers) are checked whole. Raises onnx.checker.ValidationError."""
    graph = proto.graph
    if len(proto.training_info):
        if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in io.iter_model_tensors(proto)):
            return proto
        whole = onnx.ModelProto()
        whole.CopyFrom(proto)  # external tensors and stubs only: their payload is not in it
        _zero_fill_external(whole)
        return whole
    big, external = [], []
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            external.append(t)  # still in its file (checked at load), or a stub of io.export_model
            continue
        n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        if n < _SKELETON_MIN_ELEMENTS or not t.HasField("raw_data") or t.data_type == onnx.TensorProto.STRING:
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue  # an unusual type: let the checker see it whole
        if itemsize * n != len(t.raw_data):
            raise onnx.checker.ValidationError(
                f"TensorProto (tensor name: {t.name}) raw_data size ({len(t.raw_data)} bytes) "
                f"does not match its shape and type ({itemsize * n} bytes)")
        big.append(t)
    main_ids = {id(t) for t in external}
    nested_external = any(t.data_location == onnx.TensorProto.EXTERNAL and id(t) not in main_ids
                          for t in io.iter_model_tensors(proto))
    if not big and not external and not nested_external:
        return proto
    big = big + external
    big_names = {t.name for t in big}
    input_names = {i.name for i in graph.input}
    skeleton = onnx.ModelProto()
    copy_fields(proto, skeleton, skip=("graph",))
    copy_fields(graph, skeleton.graph, skip=("initializer",))
    skeleton.graph.initializer.extend(t for t in graph.initializer if t.name not in big_names)
    for t in big:
        if t.name not in input_names:
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    if nested_external:
        _zero_fill_external(skeleton)
    return skeleton


def _zero_fill_external(model: onnx.ModelProto) -> None:
    """External tensors left in a skeleton (in subgraphs and attributes; their files the
    checker would look for in the working folder) are checked with zeros of their size."""
    for t in io.iter_model_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            n = io._fixed_nbytes(t)
            if n is None:
                continue
            del t.external_data[:]
            t.ClearField("data_location")
            t.raw_data = bytes(n)


# ------------------------------------------------------------------------------ inputs

# onnxruntime's type strings (a session's inputs) -> the numpy type fed for them
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(bfloat16)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
    "tensor(int16)": np.int16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16, "tensor(bool)": np.bool_,
}


def _input_specs(model) -> list[tuple[str, str, object, list]]:
    """(name, type as shown, numpy type or None, declared dims) of the inputs to feed:
    a ModelProto's graph inputs that are not initializers, or a session's inputs."""
    if isinstance(model, onnx.ModelProto):
        inits = {t.name for t in model.graph.initializer}
        out = []
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in tt.shape.dim]
            out.append((vi.name, onnx.TensorProto.DataType.Name(tt.elem_type),
                        onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), dims))
        return out
    return [(i.name, i.type, _ORT_TYPES.get(i.type), list(i.shape)) for i in model.get_inputs()]


def random_inputs(model, n: int = 1, *, seed: int = 0,
                  shapes: Mapping[str, Sequence[int]] | None = None,
                  ranges: Mapping[str, tuple[float, float]] | None = None,
                  normal: bool = False) -> list[dict]:
    """`n` feed dicts for the inputs of `model` (a ModelProto: its graph inputs that are
    not initializers; or a session: its inputs as onnxruntime lists them), drawn in order
    from one generator seeded with `seed`.

    Default (calibration samples, checks): floats uniform in the input's range (default
    [0, 1)), integers in [lo, hi), bools all true; symbolic dims are 1 unless `shapes`
    binds the input.
    `normal=True` (timing, shape probes): floats standard normal, integers and bools 0
    or 1 (valid ids and masks alike); every input needs a concrete shape (from `shapes`
    or fixed dims), else GraphoptError naming --input-shape / --batch."""
    shapes, ranges = shapes or {}, ranges or {}
    rng = np.random.default_rng(seed)
    specs = _input_specs(model)
    out = []
    for _ in range(n):
        feed = {}
        for name, typ, dt, dims in specs:
            if dt is None:
                raise GraphoptError(f"input '{name}' has type {typ}, which cannot be generated")
            shape = shapes.get(name)
            if normal:
                shape = shape if shape is not None else dims
                if any(not isinstance(d, (int, np.integer)) for d in shape):
                    raise GraphoptError(
                        f"input '{name}' has shape {dims}: bind it with --input-shape or --batch")
                shape, lo, hi = tuple(shape), 0, 2
            else:
                shape = tuple(shape or (d if isinstance(d, int) and d > 0 else 1 for d in dims))
                lo, hi = ranges.get(name, (0.0, 1.0))
            if np.issubdtype(dt, np.floating):
                feed[name] = (rng.standard_normal(shape) if normal else rng.uniform(lo, hi, shape)).astype(dt)
            elif dt == np.bool_:
                feed[name] = rng.integers(0, 2, shape).astype(bool) if normal else np.ones(shape, dt)
            else:
                feed[name] = rng.integers(int(lo), max(int(hi), int(lo) + 1), shape).astype(dt)
        out.append(feed)
    return out
