"""The embedding API: optimize a model with a pipeline spec in one call."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import onnx

from . import io
from ._proto import copy_fields
from .ir import Model
from .pipeline import Instrument, Pass, PassContext, PassManager, Report


def optimize(
    model: onnx.ModelProto | str | os.PathLike,
    spec: str | Sequence[str | Pass] = "clean",
    *,
    ctx: PassContext | None = None,
    verify: bool = True,
    verify_options: dict[str, Any] | None = None,
    instruments: Iterable[Instrument] = (),
    return_report: bool = False,
    **ctx_fields: Any,
) -> onnx.ModelProto | tuple[onnx.ModelProto, Report]:
    """Run a pipeline on a model and return the optimized ModelProto.

    `model` is a ModelProto or a path. `spec` is a pipeline spec such as
    ``"clean,fuse,prune(ratio=0.3)"``. Context fields (target, samples, input_shapes, ...)
    may be given as keywords. With `verify` (default) every pass that changed the graph
    is checked for numerical equivalence under its contract; a failure raises
    `VerificationError`. The input ModelProto is not modified.
    """
    if not isinstance(model, onnx.ModelProto):
        model = io.load(model)
    if ctx is None:
        ctx = PassContext(**ctx_fields)
    elif ctx_fields:
        raise TypeError("give either ctx or context keywords, not both")
    io.check_ops(model)
    ctx = _with_checked_samples(ctx, model)
    working = Model.from_onnx(model)
    inst = list(instruments)
    if verify:
        from .verify import VerifyInstrument

        inst.insert(0, VerifyInstrument(**(verify_options or {})))
    report = PassManager(spec, ctx, inst).run(working)
    out = working.to_onnx()
    return (out, report) if return_report else out


def _with_checked_samples(ctx: PassContext, model: onnx.ModelProto) -> PassContext:
    """The context with its samples validated against the model (and loaded, when given
    as a path): every consumer of samples (verification, lossy passes) gets them from here."""
    if ctx.samples is None:
        return ctx
    import dataclasses

    from .samples import prepare_samples

    return dataclasses.replace(ctx, samples=prepare_samples(ctx.samples, model))


def default_output_path(src: str | os.PathLike) -> str:
    """`model.onnx` -> `model.opt.onnx` beside the input."""
    root, ext = os.path.splitext(os.fspath(src))
    return f"{root}.opt{ext or '.onnx'}"


def optimize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike | None,
    spec: str | Sequence[str | Pass],
    *,
    ctx: PassContext | None = None,
    instruments: Iterable[Instrument] = (),
    in_place: bool = False,
    external_data: bool | None = None,
    progress=None,
) -> tuple[str, Report]:
    """Load `src`, run the pipeline, check the result and write it atomically to `dst`.

    Nothing is written unless every step succeeded; `src` (and its external data) is
    never overwritten unless `in_place`. Returns the output path and the report.
    """
    dst = os.fspath(dst) if dst is not None else (os.fspath(src) if in_place else default_output_path(src))
    manager = PassManager(spec, ctx, instruments)  # a bad spec fails before any loading
    manager.progress = progress
    # external data stays in its files (memory-mapped; see io.map_external_data) and the
    # output is written from the weights' arrays (io.export_model): no protobuf copy of
    # the weights is made on the way
    proto, sources = io.load_with_sources(src, lazy=True)
    protect = () if in_place else tuple(sources)
    io.check_destination(dst, external_data=external_data, protect=protect)  # fail before the work
    io.check_ops(proto)
    manager.ctx = _with_checked_samples(manager.ctx, proto)
    model = Model.from_onnx(proto)
    io.map_external_data(model.graph, os.path.dirname(os.path.abspath(src)))
    input_valid = check_model(proto, what=os.fspath(src))
    del proto
    report = manager.run(model)
    out, arrays = io.export_model(model)
    if input_valid:
        check_model(out, what="the optimized model", strict=True)
    io.save(out, dst, external_data=external_data, protect=protect, arrays=arrays)
    return dst, report


def check_model(proto: onnx.ModelProto, *, what: str, strict: bool = False) -> bool:
    """Structural checks. Cycles and undefined inputs are errors; the rest of
    onnx.checker's complaints are errors only when `strict` (the input passed them)."""
    import logging

    from .errors import GraphoptError
    from .ir import validate_structure

    validate_structure(proto.graph)
    try:
        skeleton = _checker_skeleton(proto)
        if skeleton.ByteSize() > io.EXTERNAL_DATA_THRESHOLD:
            return False  # the in-memory checker cannot take models over 2 GB
        onnx.checker.check_model(skeleton)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        if strict:
            raise GraphoptError(f"{what} fails onnx.checker: {first}") from e
        logging.getLogger(__name__).warning("%s fails onnx.checker: %s", what, first)
        return False
    return True


_SKELETON_MIN_ELEMENTS = 1024


def _checker_skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
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
    import numpy as np
    from onnx import helper

    big, external = [], []
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            external.append(t)  # still in its file (checked at load), or a stub of io.export_model
            continue
        n = 1
        for d in t.dims:
            n *= d
        if n < _SKELETON_MIN_ELEMENTS or not t.HasField("raw_data") or t.data_type == onnx.TensorProto.STRING:
            continue
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
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
            skeleton.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
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


