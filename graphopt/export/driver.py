"""export_model(): optimize for a runtime, convert with its converter, verify against
onnxruntime, then write. verify_converted(): the same check for a file converted before.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import GraphoptError
from ..verify.contracts import Contract
from .common import (BrokenConversion, ConversionError, ExportResult, TargetRunner, fit_samples, has_qdq,
                     resolve_shapes, save_target_repro, verify_runner)

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "tflite", "mnn", "tensorrt")
_MODULES = {"openvino": "openvino", "tflite": "litert", "mnn": "mnn", "tensorrt": "tensorrt"}
PRECISIONS = ("fp32", "int8", "fp16")
INT8_BUDGET = {"rel_l2": 0.1}    # the quant pass's own default
FP16_BUDGET = {"rel_l2": 0.01}


def target(runtime: str):
    if runtime not in _MODULES:
        raise GraphoptError(f"unknown runtime '{runtime}' (expected one of {', '.join(RUNTIMES)})")
    return importlib.import_module(f"graphopt.export.{_MODULES[runtime]}")


def runtime_for_path(path: str | os.PathLike) -> str | None:
    suffix = Path(path).suffix.lower()
    for rt in RUNTIMES:
        if suffix in target(rt).SUFFIXES:
            return rt
    return None


def _outputs(model: onnx.ModelProto) -> tuple[list[str], list[np.dtype]]:
    names = [o.name for o in model.graph.output]
    dtypes = [np.dtype(onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type)) for o in model.graph.output]
    return names, dtypes


def _output_shapes(reference: onnx.ModelProto, shapes: dict[str, tuple], feeds: dict) -> list[tuple]:
    from ..verify.runner import Runner

    return [np.asarray(o).shape for o in Runner(reference, threads=2).run(feeds, cache=False)]


def make_runner(runtime: str, path: Path, reference: onnx.ModelProto, shapes: dict[str, tuple],
                threads: int = 2) -> TargetRunner:
    """Load a converted model in its runtime, as a runner over the ONNX model's
    inputs and outputs (names, order, dtypes and layout)."""
    mod = target(runtime)
    why = mod.available()
    if why:
        raise ConversionError(why)
    names, dtypes = _outputs(reference)
    if runtime == "openvino":
        return mod.runner(path, names, threads)
    if runtime == "mnn":
        return mod.runner(path, list(shapes), names, dtypes, threads)
    if runtime == "tflite":
        from ..verify.inputs import InputSpace

        probe = InputSpace.from_model(reference, shapes).draw(1, 0)[0].feeds
        return mod.runner(path, shapes, names, dtypes, output_shapes=_output_shapes(reference, shapes, probe),
                          threads=threads)
    return mod.runner(path, names, dtypes)


# The float contract of a hand-off. Another runtime's kernels (Winograd and im2col
# convolutions, fused or approximated exp/erf/tanh, other reduction orders) differ from
# onnxruntime's far beyond the one-ulp weight noise a graph pass is held to. Measured on
# the shipped models and PP-OCR cls: at most 5.6e-5 of an output's magnitude (MNN, tiny
# transformer); the bugs this check exists for (a lost scale, a wrong layout, perturbed
# weights) land at 1e-2 and above.
EXPORT_RTOL = 1e-4
EXPORT_ATOL = 1e-5


def export_contract(precision: str = "fp32", lossy: bool = False, budget: dict | None = None) -> Contract:
    return _contract(precision, lossy, budget)


def _contract(precision: str, lossy: bool, budget: dict | None) -> Contract:
    if precision == "fp32" and not lossy:
        return Contract("float", rtol=EXPORT_RTOL, atol=EXPORT_ATOL)
    default = FP16_BUDGET if precision == "fp16" else INT8_BUDGET
    return Contract("lossy", budget=dict(budget or default))


def export_model(
    src: str | os.PathLike, runtime: str, out: str | os.PathLike | None = None, *,
    spec: str | None = None, precision: str = "fp32", input_shapes: dict | None = None,
    input_ranges: dict | None = None, samples: list[dict] | None = None, seed: int = 0,
    examples: int = 8, budget: dict | None = None, repro_dir: str | os.PathLike | None = None,
    verify_passes: bool = True, tamper=None,
) -> ExportResult:
    """Optimize `src` for `runtime`, convert it with the runtime's converter, run the
    result in the runtime on the verifier's inputs and judge it against onnxruntime on
    `src` (float contract; lossy for INT8/FP16). Writes `out` (and its companion files)
    only when all of that succeeded. Raises ConversionError (exit 2) when the converter
    cannot convert, BrokenConversion (exit 1, with a reproducer folder) when the result
    computes something else. `tamper(paths)`: a hook run on the converted files before
    the check (tests use it to simulate a converter bug)."""
    from .. import io
    from ..api import optimize

    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise GraphoptError(f"unknown precision '{precision}' (expected one of {', '.join(PRECISIONS)})")
    mod = target(runtime)
    why = mod.available()
    if why:
        raise ConversionError(why)
    src = Path(src)
    out = Path(out) if out is not None else src.with_suffix(mod.SUFFIXES[0])
    if out.suffix.lower() not in mod.SUFFIXES:
        raise GraphoptError(f"output '{out}' should end in {' or '.join(mod.SUFFIXES)} for {runtime}")
    if out.resolve() == src.resolve():
        raise GraphoptError("the output would overwrite the input model")
    if not out.parent.exists():
        raise GraphoptError(f"output folder '{out.parent}' does not exist")
    model = io.load(src)
    shapes = resolve_shapes(model, dict(input_shapes or {}))
    fitted = fit_samples(samples, shapes) if samples else []
    if runtime == "mnn" and (precision == "int8" or has_qdq(model)):
        raise ConversionError(mod.QDQ_REFUSAL)
    if spec is None:
        spec = mod.INT8_SPEC if precision == "int8" else mod.DEFAULT_SPEC
        if precision == "fp16" and runtime in ("openvino",):
            spec = f"{spec},fp16"
    times: dict[str, float] = {}
    t = time.perf_counter()
    optimized = optimize(model, spec, verify=verify_passes, input_shapes=shapes, input_ranges=dict(input_ranges or {}),
                         samples=fitted or None, seed=seed, budget=dict(budget or {}))
    times["optimize"] = time.perf_counter() - t
    if hasattr(mod, "prepare"):
        optimized = mod.prepare(optimized)
    qdq = has_qdq(optimized)
    contract = _contract(precision, qdq or has_qdq(model), budget)
    calib = fitted
    if precision == "int8" and runtime == "tflite" and not calib:
        from ..verify.inputs import InputSpace

        log.warning("no --samples: INT8 calibration on drawn inputs (ranges of made-up data, not the model's)")
        calib = [ex.feeds for ex in InputSpace.from_model(model, shapes, input_ranges).draw(32, seed)]
    work = Path(tempfile.mkdtemp(prefix=".graphopt-export-", dir=out.parent.resolve()))
    try:
        onnx_path = work / f"{out.stem}.onnx"
        io.save(optimized, onnx_path)
        t = time.perf_counter()
        files: list[Path] = []
        try:
            files = mod.convert(onnx_path, work, out.stem, int8=precision == "int8", fp16=precision == "fp16",
                                qdq=qdq, calib=calib)
            times["convert"] = time.perf_counter() - t
            if tamper is not None:
                tamper(files)
            t = time.perf_counter()
            runner = make_runner(runtime, files[0], model, shapes)
        except ConversionError as e:
            repro = _conversion_repro(repro_dir or Path("graphopt-repro") / f"export-{runtime}", optimized,
                                      files, work, runtime, precision, str(e), src)
            raise ConversionError(f"{e}; reproducer in {repro}") from e
        result = verify_runner(model, runner, contract, shapes=shapes, samples=fitted, examples=examples,
                               seed=seed, input_ranges=input_ranges)
        times["verify"] = time.perf_counter() - t
        res = ExportResult(runtime, None, [], result, spec, precision,
                           layout=getattr(runner, "layout", "") or "as the ONNX model")
        if qdq and hasattr(runner, "int8_ops"):
            res.notes.append(f"{runner.int8_ops()} Convolution/FullyConnected/MatMul layer(s) run in 8-bit "
                             f"precision in {runtime}")
        if getattr(runner, "quantized", False):
            res.notes.append("full-integer model: int8 inputs/outputs, quantized and dequantized by the runner")
        if result.skipped:
            raise ConversionError(f"could not verify the {runtime} model: {result.reason}")
        if not result.ok:
            where = None
            if contract.kind == "float" and result.counterexample is not None:
                from .localize import first_divergence

                where = first_divergence(runtime, optimized, result.counterexample, shapes)
            if where:
                result.notes.append(f"first divergence: {where}")
            repro = save_target_repro(repro_dir or Path("graphopt-repro") / f"export-{runtime}", model, files, result,
                                      runtime=runtime, title=f"graphopt export {src} --to {runtime}")
            raise BrokenConversion(result.message(f"the {runtime} model disagrees with onnxruntime")
                                   + ("" if result.repro else f"; reproducer in {repro}")
                                   + (f"; first divergence at {where}" if where else ""))
        moved = []
        for f in files:
            dst = out.with_suffix(f.suffix) if f.suffix != out.suffix else out
            shutil.move(str(f), dst)
            moved.append(dst)
        res.output, res.files = moved[0], moved
        res.model = optimized
        times["total"] = time.perf_counter() - t0
        res.seconds = times
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _conversion_repro(directory, converted_onnx: onnx.ModelProto, files: list[Path], work: Path, runtime: str,
                      precision: str, error: str, src: Path) -> Path:
    """A folder to reproduce a failed conversion: the ONNX model handed to the converter
    (optimized, static shapes), the converter's log, what it wrote, and the command."""
    import shlex

    from .. import io

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    io.save(converted_onnx, d / "model.onnx")
    for f in [*files, *work.glob("*.log")]:
        if f.exists():
            shutil.copy2(f, d / f.name)
    mod = target(runtime)
    cmd = (f"graphopt export {shlex.quote(str(d / 'model.onnx'))} --to {runtime} -o "
           f"{shlex.quote(str(d / ('out' + mod.SUFFIXES[0])))} -p clean --precision {precision}")
    (d / "README.txt").write_text("\n".join([
        f"graphopt export {src} --to {runtime}: the conversion failed", "", error, "",
        "model.onnx   the model handed to the converter (after graphopt's passes, static shapes)",
        "*.log        the converter's output", "", "Re-run with:", f"    {cmd}", ""]))
    return d


def verify_converted(
    reference_path: str | os.PathLike, converted: str | os.PathLike, *, contract: Contract,
    input_shapes: dict | None = None, input_ranges: dict | None = None, samples: list[dict] | None = None,
    seed: int = 0, examples: int = 8, repro_dir: str | os.PathLike | None = None,
) -> tuple[Any, str]:
    """`graphopt verify A.onnx B.xml|.tflite|.mnn|.engine`: compare the converted model
    in its runtime with onnxruntime on A. Returns (CompareResult, runtime)."""
    from .. import io

    runtime = runtime_for_path(converted)
    if runtime is None:
        raise GraphoptError(f"'{converted}' is not a converted model graphopt can run")
    converted = Path(converted)
    if not converted.exists():
        raise GraphoptError(f"no such file: {converted}")
    reference = io.load(reference_path)
    shapes = resolve_shapes(reference, dict(input_shapes or {}))
    fitted = fit_samples(samples, shapes) if samples else []
    runner = make_runner(runtime, converted, reference, shapes)
    result = verify_runner(reference, runner, contract, shapes=shapes, samples=fitted, examples=examples,
                           seed=seed, input_ranges=input_ranges)
    if not result.ok and not result.skipped:
        save_target_repro(repro_dir or Path("graphopt-repro") / "verify", reference, [converted], result,
                          runtime=runtime, title=f"graphopt verify {reference_path} {converted}")
    return result, runtime
