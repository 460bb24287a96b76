"""Verified hand-off to other runtimes: OpenVINO, LiteRT (TFLite), MNN, TensorRT.

    from graphopt.export import export_model
    res = export_model("model.onnx", "openvino", "model.xml")
    res.verification.summary

Each runtime has a module (openvino, litert, mnn, tensorrt) with its converter and a
runner; common.py holds what they share (shapes, verification through
graphopt.verify.compare, reproducers, interleaved timing); driver.py puts them together.
"""

from .common import BrokenConversion, ConversionError, ExportResult
from .driver import PRECISIONS, RUNTIMES, export_model, make_runner, runtime_for_path, verify_converted

__all__ = ["BrokenConversion", "ConversionError", "ExportResult", "PRECISIONS", "RUNTIMES", "export_model",
           "make_runner", "runtime_for_path", "verify_converted"]
