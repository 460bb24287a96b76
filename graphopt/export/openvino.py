"""OpenVINO: `openvino.convert_model` reads the ONNX model, `save_model` writes IR
(model.xml + model.bin), `Core.compile_model` runs it on the CPU plugin.

Weights are saved in FP32 (compress_to_fp16=False) and compiled with
INFERENCE_PRECISION_HINT f32, so an FP32 export is judged under the float contract.
A QDQ INT8 model (graphopt's `quant`) is read as is: OpenVINO's low-precision
transformations run the quantized ops in u8/i8, which `runtime_precisions` reports.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .common import ConversionError, TargetRunner

log = logging.getLogger(__name__)

NAME = "openvino"
SUFFIXES = (".xml",)
DEFAULT_SPEC = "static-shapes,clean,fuse"
INT8_SPEC = "static-shapes,clean,fuse,quant(mode=static,measure=false)"


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise ConversionError("OpenVINO is not installed: pip install 'graphopt[openvino]'") from None
    return ov


def available() -> str | None:
    """None if this runtime can run here, else why not."""
    try:
        _ov()
    except ConversionError as e:
        return str(e)
    return None


def convert(onnx_path: Path, out_dir: Path, stem: str, **_: object) -> list[Path]:
    ov = _ov()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own error types
        raise ConversionError(f"OpenVINO cannot convert the model: {_first_line(e)}") from e
    xml = out_dir / f"{stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def _first_line(e: Exception) -> str:
    lines = [line.strip().lstrip("- ").strip() for line in str(e).splitlines() if line.strip()]
    # OpenVINO's messages start with a source location; the op's name is in a later line
    for key in ("no conversion rule", "operation", "node"):
        for line in lines:
            if key in line.lower():
                return line[:300]
    return (lines[-1] if lines else type(e).__name__)[:300]


class Runner(TargetRunner):
    backend = "openvino"

    def __init__(self, path: Path, output_names: list[str], threads: int = 2) -> None:
        super().__init__()
        ov = _ov()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "INFERENCE_PRECISION_HINT": "f32"})
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"OpenVINO cannot load {path.name}: {_first_line(e)}") from e
        self.request = self.compiled.create_infer_request()
        names = [o.get_any_name() for o in self.compiled.outputs]
        # the IR keeps the ONNX output names; order the outputs like the ONNX model's
        self.order = [names.index(n) if n in names else i for i, n in enumerate(output_names)]

    def _execute(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        outs = [np.array(res[self.compiled.outputs[i]]) for i in self.order]
        return outs

    def timed_call(self, feeds):
        prepared = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        return lambda: self.request.infer(prepared)

    def int8_ops(self) -> int:
        """Convolution/FullyConnected/MatMul layers the CPU plugin runs in 8-bit precision
        (the compiled model's runtimePrecision u8/i8)."""
        n = 0
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "runtimePrecision" not in info or "layerType" not in info:
                continue
            kind, prec = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
            if kind in ("Convolution", "FullyConnected", "MatMul", "Deconvolution") and prec in ("u8", "i8"):
                n += 1
        return n


def runner(path: Path, output_names: list[str], threads: int = 2) -> Runner:
    return Runner(path, output_names, threads)
