"""Helpers of tests/test_export.py: models, and a simulated converter bug."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn.onnx"
TRANSFORMER = REPO / "models" / "tiny_transformer.onnx"
SUFFIX = {"openvino": ".xml", "tflite": ".tflite", "mnn": ".mnn", "tensorrt": ".engine"}


def ppocr_cls() -> Path | None:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    p = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    return p if p.exists() else None


# (label, path getter, static input shapes)
MODELS = {
    "digits": (lambda: DIGITS, {}),
    "transformer": (lambda: TRANSFORMER, {"input_ids": (1, 16)}),
    "ppocr_cls": (ppocr_cls, {"x": (1, 3, 48, 192)}),
}


def perturb_weights_in_file(converted: Path, onnx_model: onnx.ModelProto, factor: float = 1.5) -> str:
    """Simulate a converter bug: find the bytes of the ONNX model's float weights in the
    converted file and scale the first match in place (OpenVINO's .bin and MNN keep FP32
    weights as they are). Returns the name of the weight changed."""
    data = bytearray(converted.read_bytes())
    weights = [t for t in onnx_model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    weights.sort(key=lambda t: -int(np.prod(t.dims)))
    for t in weights:
        arr = numpy_helper.to_array(t).astype("<f4")
        if arr.size < 16:
            continue
        raw = arr.tobytes()
        at = data.find(raw)
        if at < 0:
            continue
        data[at:at + len(raw)] = (arr * np.float32(factor)).astype("<f4").tobytes()
        converted.write_bytes(bytes(data))
        return t.name
    raise AssertionError(f"no ONNX weight found verbatim in {converted.name}")
