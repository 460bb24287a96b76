"""TensorRT: an engine built from the ONNX model with TensorRT's ONNX parser (through
Polygraphy's loaders), run with Polygraphy's TrtRunner. GPU only.

Built and tested only where `nvidia-smi` lists a GPU; elsewhere every entry point
refuses with one line, and the tests skip with "needs an NVIDIA GPU" (the one skip CI
allows). This path has not been run on a GPU in graphopt's CI: there is none.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .common import ConversionError, TargetRunner

log = logging.getLogger(__name__)

NAME = "tensorrt"
SUFFIXES = (".engine", ".plan")
DEFAULT_SPEC = "static-shapes,clean,fuse"
INT8_SPEC = "static-shapes,clean,fuse,quant(mode=static,measure=false)"


@functools.lru_cache(maxsize=1)
def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


def available() -> str | None:
    if not gpu_present():
        return "TensorRT needs an NVIDIA GPU (nvidia-smi lists none here)"
    try:
        import polygraphy  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed: pip install 'graphopt[tensorrt]'"
    return None


def convert(onnx_path: Path, out_dir: Path, stem: str, *, fp16: bool = False, qdq: bool = False, **_: object) -> list[Path]:
    why = available()
    if why:
        raise ConversionError(why)
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    # a QDQ model carries its INT8 scales: TensorRT's explicit quantization takes them as they are
    config = CreateConfig(fp16=fp16, int8=qdq)
    try:
        data = EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config)()
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"TensorRT cannot build an engine: {str(e).splitlines()[0][:300]}") from e
    if data is None:
        raise ConversionError("TensorRT cannot build an engine (see the log for the failing layer)")
    out = out_dir / f"{stem}.engine"
    out.write_bytes(bytes(data))
    return [out]


class Runner(TargetRunner):
    backend = "tensorrt"

    def __init__(self, path: Path, output_names: list[str], output_dtypes: list[np.dtype]) -> None:
        super().__init__()
        why = available()
        if why:
            raise ConversionError(why)
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        self._runner.activate()
        self.output_names, self.output_dtypes = list(output_names), list(output_dtypes)

    def _execute(self, feeds):
        res = self._runner.infer(feeds)
        return [np.asarray(res[n]).astype(dt, copy=False) for n, dt in zip(self.output_names, self.output_dtypes)]

    def close(self) -> None:
        self._runner.deactivate()


def runner(path: Path, output_names: list[str], output_dtypes: list[np.dtype]) -> Runner:
    return Runner(path, output_names, output_dtypes)
