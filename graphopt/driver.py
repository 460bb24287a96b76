"""The one driver: every way in runs a pipeline through here.

`graphopt.optimize` and `optimize_file` (graphopt.api, the CLI's `graphopt MODEL`,
`graphopt batch`), `graphopt compile`'s front end (graphopt.codegen) and the search's
trials all call `run_pipeline`. It checks the input (ops with a schema, samples against
the signature, optionally onnx.checker), runs the pass manager with the verifier as the
first instrument unless told not to, and, when the input passed onnx.checker, requires
the output to pass it too. What differs between the ways in is only the arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterable, Sequence

import onnx

from . import io
from .errors import GraphoptError
from .ir import Model
from .pipeline import Instrument, Pass, PassContext, PassManager, Report

log = logging.getLogger(__name__)


def pass_manager(
    spec: str | Sequence[str | Pass],
    ctx: PassContext | None = None,
    *,
    verify: bool = True,
    verify_options: dict[str, Any] | None = None,
    instruments: Iterable[Instrument] = (),
    progress: Callable[[str], None] | None = None,
) -> PassManager:
    """The pass manager of one run. The spec is resolved here (a bad spec fails before
    anything is loaded); with `verify` the verifier is the first instrument, so the ones
    after it see a reverted pass as reverted."""
    inst = list(instruments)
    if verify:
        from .instruments.verify import VerifyInstrument

        inst.insert(0, VerifyInstrument(**(verify_options or {})))
    manager = PassManager(spec, ctx, inst)
    manager.progress = progress
    return manager


def run_pipeline(
    model: onnx.ModelProto,
    manager: PassManager,
    *,
    check: bool = False,
    what: str = "the input model",
    weights_dir: str | os.PathLike | None = None,
    stubs: bool = False,
) -> tuple[onnx.ModelProto, dict, Report]:
    """Run `manager`'s pipeline on `model`, which is not modified: (optimized model,
    weight arrays, report).

    check: run onnx.checker on the input and, when it passes, on the output too (strict:
        an output the checker refuses is an error); `what` names the input in messages.
    weights_dir: the model was loaded with lazy external data (io.load_with_sources):
        its weights are mapped from the files in this folder.
    stubs: the output's large weights are stubs naming entries of the returned dict
        (io.export_model: no weight is copied; only io.save understands them). Otherwise
        the output is a whole ModelProto and the dict is empty.
    """
    io.check_ops(model)
    manager.ctx = _with_checked_samples(manager.ctx, model)
    working = Model.from_onnx(model)
    if weights_dir is not None:
        io.map_external_data(working.graph, os.fspath(weights_dir))
    input_valid = check and check_model(model, what=what)
    report = manager.run(working)
    out, arrays = io.export_model(working) if stubs else (working.to_onnx(), {})
    if input_valid:
        check_model(out, what="the optimized model", strict=True)
    return out, arrays, report


def _with_checked_samples(ctx: PassContext, model: onnx.ModelProto) -> PassContext:
    """The context with its samples validated against the model (and loaded, when given
    as a path): every consumer of samples (verification, lossy passes) gets them from here."""
    if ctx.samples is None:
        return ctx
    from .samples import prepare_samples

    return dataclasses.replace(ctx, samples=prepare_samples(ctx.samples, model))


# ---------------------------------------------------------------------------- onnx.checker


def check_model(proto: onnx.ModelProto, *, what: str, strict: bool = False) -> bool:
    """Structural checks. Cycles and undefined inputs are errors; the rest of
    onnx.checker's complaints are errors only when `strict` (the input passed them)."""
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
        log.warning("%s fails onnx.checker: %s", what, first)
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
    from ._proto import copy_fields

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
