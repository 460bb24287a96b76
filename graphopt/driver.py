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
    onnx.checker's complaints are errors only when `strict` (the input passed them). The
    checker sees the model without its large weights (graphopt.runtime.check); a model
    over 2 GB even so is not checked (False)."""
    from .ir import validate_structure
    from .runtime import TOO_LARGE, check

    validate_structure(proto.graph)
    reason = check(proto, load=False)
    if reason is None:
        return True
    if reason == TOO_LARGE:
        return False  # the in-memory checker cannot take models over 2 GB
    first = reason.removeprefix("onnx.checker: ")
    if strict:
        raise GraphoptError(f"{what} fails onnx.checker: {first}")
    log.warning("%s fails onnx.checker: %s", what, first)
    return False
