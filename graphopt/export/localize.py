"""Which node does a converted model first disagree at?

Polygraphy's idea, for the runtimes whose converters are quick (OpenVINO, MNN): convert
the model again with every float intermediate tensor marked as a graph output, run it in
the runtime and in onnxruntime on the failing input, and walk the tensors in graph order
to the first one past the bound (float: rtol 1e-3; integer and bool: exact). Marking outputs can keep the converter from fusing
across them, so a divergence that only a fusion causes may not reproduce: then nothing
is claimed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

QUICK = ("openvino", "mnn")
RTOL = 1e-3   # looser than the export's contract: intermediate tensors carry no noise judgement
ATOL = 1e-4
MAX_TENSORS = 2000
_T = onnx.TensorProto
_KINDS = {_T.FLOAT, _T.INT64, _T.INT32, _T.BOOL, _T.INT8, _T.UINT8}


def _with_all_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, onnx.NodeProto]]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    order: list[tuple[str, onnx.NodeProto]] = []
    for node in out.graph.node:
        for name in node.output:
            t = types.get(name)
            if not name or t is None or not t.HasField("tensor_type"):
                continue
            if t.tensor_type.elem_type not in _KINDS:
                continue
            order.append((name, node))
            if name not in have:
                vi = out.graph.output.add()
                vi.name = name
                vi.type.CopyFrom(t)
                have.add(name)
    return out, order[:MAX_TENSORS]


def first_divergence(runtime: str, converted_onnx: onnx.ModelProto, feeds: dict[str, np.ndarray],
                     shapes: dict[str, tuple]) -> str | None:
    """'node NAME (OP), tensor T: max abs err E (R of its magnitude)' (integer tensors:
    how many elements differ), or None when no tensor diverges (or this cannot be told)."""
    if runtime not in QUICK:
        return None
    from ..verify.runner import Runner
    from .driver import make_runner, target

    try:
        marked, order = _with_all_outputs(converted_onnx)
        if not order:
            return None
        work = Path(tempfile.mkdtemp(prefix="graphopt-localize-"))
        try:
            path = work / "m.onnx"
            onnx.save(marked, str(path))
            files = target(runtime).convert(path, work, "m")
            runner = make_runner(runtime, files[0], marked, shapes)
            got = runner.run(feeds, cache=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ref = Runner(marked, threads=2).run(feeds, cache=False)
    except Exception as e:  # noqa: BLE001 - localization is best effort; the failure stands without it
        log.info("could not localize the divergence: %s", e)
        return None
    index = {o.name: i for i, o in enumerate(marked.graph.output)}
    for name, node in order:
        a0 = np.asarray(ref[index[name]])
        a, b = a0.astype(np.float64), np.asarray(got[index[name]]).astype(np.float64)
        if a.shape != b.shape:
            continue  # a layout the runner does not restore for intermediates: no claim
        if a0.dtype.kind != "f":
            if not np.array_equal(a, b):
                n = int(np.count_nonzero(a != b))
                return f"node '{node.name or '?'}' ({node.op_type}), tensor '{name}': {n} of {a.size} elements differ"
            continue
        finite = np.isfinite(a) & np.isfinite(b)
        scale = float(np.max(np.abs(a[finite]))) if finite.any() else 0.0
        err = float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0
        if err > ATOL + RTOL * scale or (np.isfinite(a) != np.isfinite(b)).any():
            return (f"node '{node.name or '?'}' ({node.op_type}), tensor '{name}': max abs err {err:.3g} "
                    f"({err / max(scale, 1e-30):.2g} of its magnitude)")
    return None
