"""Parameters, model size and activation memory.

`count_params` sums the initializers (and Constant nodes) of all graphs. `estimate_activation
_memory` walks the nodes in execution (file) order and keeps each activation alive from its
producer to its last consumer (graph outputs to the end; graph inputs from the start): the
peak of the live bytes is the activation memory a runtime without in-place reuse or
operator workspaces needs. It is an *estimate* from shapes; `measure_session_memory` runs
a real onnxruntime session in a fresh process and reports what the OS measured.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..errors import GraphoptError
from .shapes import ShapeInfo, _walk_graphs, infer_shapes

log = logging.getLogger(__name__)


def _itemsize(dtype: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize)
    except Exception:  # string, float8 and friends
        return 1 if dtype in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8) else 4


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    return n * _itemsize(t.data_type)


@dataclass
class ParamCount:
    """Weights of a model: element count and bytes, in total and by element type."""

    total: int
    bytes: int
    tensors: int
    by_dtype: dict[str, int] = field(default_factory=dict)  # dtype name -> elements

    def as_dict(self) -> dict:
        return {"total": self.total, "bytes": self.bytes, "tensors": self.tensors,
                "by_dtype": dict(self.by_dtype)}


def count_params(model: onnx.ModelProto) -> ParamCount:
    """All stored weights: initializers of every graph and Constant node values."""
    total = nbytes = count = 0
    by_dtype: dict[str, int] = defaultdict(int)

    def add(t: onnx.TensorProto) -> None:
        nonlocal total, nbytes, count
        n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        total += n
        nbytes += _tensor_bytes(t)
        count += 1
        by_dtype[onnx.TensorProto.DataType.Name(t.data_type).lower()] += n

    for g in _walk_graphs(model.graph):
        for t in g.initializer:
            add(t)
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.type == onnx.AttributeProto.TENSOR:
                        add(a.t)
    return ParamCount(total, nbytes, count, dict(by_dtype))


@dataclass
class ActivationMemory:
    """Activation memory estimated from tensor liveness in execution order."""

    peak_bytes: int
    peak_node: str  # the node running when the peak is reached
    total_bytes: int  # every activation at once (no reuse)
    inputs_bytes: int
    outputs_bytes: int
    unknown: list[str] = field(default_factory=list)  # tensors whose size is unknown (counted 0)
    timeline: list[int] = field(default_factory=list)  # live bytes while each node runs

    def as_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "peak_node": self.peak_node,
                "total_bytes": self.total_bytes, "inputs_bytes": self.inputs_bytes,
                "outputs_bytes": self.outputs_bytes, "unknown_tensors": len(self.unknown)}


def estimate_activation_memory(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    batch: int | None = None,
    shapes: ShapeInfo | None = None,
) -> ActivationMemory:
    """Peak bytes of live activations when the main graph runs in file order."""
    info = shapes or infer_shapes(model, input_shapes, dims=dims, batch=batch)
    g = model.graph
    weights = {t.name for t in g.initializer}
    weights |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    unknown: list[str] = []

    def size(name: str) -> int:
        s = info.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            unknown.append(name)
            return 0
        return int(np.prod(s, dtype=np.int64)) * _itemsize(info.dtypes.get(name, 1))

    # last step at which each tensor is read (subgraph bodies read outer names too)
    last_use: dict[str, int] = {}
    for step, node in enumerate(g.node):
        names = set(node.input)
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                for sg in _walk_graphs(sub):
                    for n in sg.node:
                        names.update(n.input)
        for name in names:
            if name:
                last_use[name] = step
    end = len(g.node)
    outputs = {o.name for o in g.output}
    for name in outputs:
        last_use[name] = end
    inputs = [i.name for i in g.input if i.name not in weights]
    sizes: dict[str, int] = {}
    live = 0
    for name in inputs:
        sizes[name] = size(name)
        live += sizes[name]
    inputs_bytes = live
    free_at: dict[int, list[str]] = defaultdict(list)
    for name in inputs:
        free_at[last_use.get(name, -1)].append(name)
    peak, peak_node, timeline = live, "(inputs)", []
    for name in free_at.pop(-1, []):
        live -= sizes[name]
    total = inputs_bytes
    for step, node in enumerate(g.node):
        for out in node.output:
            if out and out not in weights and out not in sizes:
                sizes[out] = size(out)
                live += sizes[out]
                total += sizes[out]
                free_at[max(last_use.get(out, step), step)].append(out)
        timeline.append(live)
        if live > peak:
            peak, peak_node = live, node.name or f"{node.op_type}_{step}"
        for name in free_at.pop(step, []):
            live -= sizes[name]
    outputs_bytes = sum(sizes.get(o, 0) for o in outputs)
    return ActivationMemory(peak, peak_node, total, inputs_bytes, outputs_bytes,
                            sorted(set(unknown)), timeline)


# ------------------------------------------------------------------------ measured memory


@dataclass
class MeasuredMemory:
    """Resident memory of a fresh process running one onnxruntime session (from the OS).

    baseline_bytes: peak RSS after importing numpy and onnxruntime, before the session;
    session_bytes: peak RSS after creating the session (weights, graph optimizations);
    run_bytes: peak RSS after running it; session_peak_bytes = run_bytes - baseline_bytes
    is what the session itself added at its high-water mark.
    """

    baseline_bytes: int
    session_bytes: int
    run_bytes: int
    threads: int

    @property
    def session_peak_bytes(self) -> int:
        return self.run_bytes - self.baseline_bytes

    def as_dict(self) -> dict:
        return {"baseline_bytes": self.baseline_bytes, "session_bytes": self.session_bytes,
                "run_bytes": self.run_bytes, "session_peak_bytes": self.session_peak_bytes,
                "threads": self.threads, "method": "peak RSS (VmHWM) of a fresh subprocess"}


# The measuring process imports only numpy and onnxruntime and so builds its session
# itself (the options of graphopt.runtime.session(optimize=True, log_level=3)): importing
# graphopt there would add ~15 MB to the baseline and lower the measured peak by ~2 MB.
_MEASURE = r"""
import json, sys
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import numpy as np
import onnxruntime as ort
path, shapes, threads, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = hwm()
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.log_severity_level = 3
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
after_load = hwm()
TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
         "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
         "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
rng = np.random.default_rng(0)
feeds = {}
for i in sess.get_inputs():
    dt = TYPES.get(i.type, np.float32)
    shape = shapes[i.name]
    if np.issubdtype(dt, np.floating):
        feeds[i.name] = rng.standard_normal(shape).astype(dt)
    else:
        feeds[i.name] = np.zeros(shape, dt)
for _ in range(runs):
    sess.run(None, feeds)
print(json.dumps({"baseline": base, "session": after_load, "run": hwm()}))
"""


def measure_session_memory(
    model: onnx.ModelProto | str | os.PathLike,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    threads: int = 1,
    runs: int = 2,
    timeout: float = 600.0,
) -> MeasuredMemory:
    """Run the model in onnxruntime in a fresh Python process and read its peak RSS.

    `input_shapes` must give a concrete shape for every graph input (see
    `shapes.resolve_input_shapes`). Linux reports VmHWM, elsewhere ru_maxrss.
    """
    shapes = {k: [int(d) for d in v] for k, v in input_shapes.items()}
    tmp = None
    try:
        if isinstance(model, onnx.ModelProto):
            fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix="graphopt-mem-")
            os.close(fd)
            onnx.save(model, tmp)
            path = tmp
        else:
            path = str(model)
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, path, json.dumps(shapes), str(threads), str(runs)],
            capture_output=True, text=True, timeout=timeout,
        )
    finally:
        if tmp:
            os.unlink(tmp)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GraphoptError(f"onnxruntime could not run the model to measure memory: {last}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return MeasuredMemory(data["baseline"], data["session"], data["run"], threads)
