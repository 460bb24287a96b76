"""The embedding API: optimize a model with a pipeline spec in one call."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import onnx

from . import io
from .driver import pass_manager, run_pipeline
from .pipeline import Instrument, Pass, PassContext, Report


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
    manager = pass_manager(spec, ctx, verify=verify, verify_options=verify_options, instruments=instruments)
    out, _, report = run_pipeline(model, manager)
    return (out, report) if return_report else out


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
    verify: bool = False,
    verify_options: dict[str, Any] | None = None,
    in_place: bool = False,
    external_data: bool | None = None,
    progress=None,
) -> tuple[str, Report]:
    """Load `src`, run the pipeline, check the result and write it atomically to `dst`.

    With `verify` the verifier checks every pass (the first of the instruments). The
    input is checked with onnx.checker, and if it passes, so must the output. Nothing is
    written unless every step succeeded; `src` (and its external data) is never
    overwritten unless `in_place`. Returns the output path and the report.
    """
    dst = os.fspath(dst) if dst is not None else (os.fspath(src) if in_place else default_output_path(src))
    # a bad spec fails before any loading
    manager = pass_manager(spec, ctx, verify=verify, verify_options=verify_options, instruments=instruments,
                           progress=progress)
    # external data stays in its files (memory-mapped; see io.map_external_data) and the
    # output is written from the weights' arrays (io.export_model): no protobuf copy of
    # the weights is made on the way
    proto, sources = io.load_with_sources(src, lazy=True)
    protect = () if in_place else tuple(sources)
    io.check_destination(dst, external_data=external_data, protect=protect)  # fail before the work
    out, arrays, report = run_pipeline(proto, manager, check=True, what=os.fspath(src), stubs=True,
                                       weights_dir=os.path.dirname(os.path.abspath(src)))
    io.save(out, dst, external_data=external_data, protect=protect, arrays=arrays)
    return dst, report
