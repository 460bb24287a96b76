"""Everything `graphopt profile` and the reports show about one model, in one object."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import onnx

from ..errors import GraphoptError
from .flops import MacCount, count_macs
from .latency import LatencyResult, default_threads, make_session, measure_latency
from .memory import (ActivationMemory, MeasuredMemory, ParamCount, count_params,
                     estimate_activation_memory, measure_session_memory)
from .shapes import (infer_shapes, input_signature, resolve_input_shapes, shapes_from_run,
                     unknown_tensors)

log = logging.getLogger(__name__)


@dataclass
class BatchProfile:
    """Costs at one binding of the inputs (one batch size)."""

    batch: int | None
    input_shapes: dict[str, tuple]
    macs: MacCount
    activations: ActivationMemory
    latency: LatencyResult | None = None

    def as_dict(self, details: bool = False) -> dict:
        macs = self.macs.as_dict()
        if not details:
            macs.pop("nodes")
        return {
            "batch": self.batch,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "macs": self.macs.total, "flops": self.macs.flops,
            "counts": macs,
            "activation_memory": self.activations.as_dict(),
            "latency": self.latency.as_dict() if self.latency else None,
        }


@dataclass
class Profile:
    """A model's size, cost, memory and speed."""

    name: str
    file_bytes: int | None
    serialized_bytes: int
    nodes: int
    opset: int | None
    params: ParamCount
    batches: list[BatchProfile] = field(default_factory=list)
    measured_memory: MeasuredMemory | None = None
    threads: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> BatchProfile:
        return self.batches[0]

    def as_dict(self) -> dict:
        return {
            "name": self.name, "file_bytes": self.file_bytes,
            "serialized_bytes": self.serialized_bytes, "nodes": self.nodes, "opset": self.opset,
            "params": self.params.as_dict(), "threads": self.threads,
            "batches": [b.as_dict(details=(i == 0)) for i, b in enumerate(self.batches)],
            "measured_memory": self.measured_memory.as_dict() if self.measured_memory else None,
            "notes": list(self.notes),
        }


def _bind(model: onnx.ModelProto, input_shapes, batch: int | None) -> dict[str, tuple]:
    sig = input_signature(model)
    if batch is not None and not input_shapes:
        leading = [s[0] for s in sig.values() if s]
        if leading and all(isinstance(d, int) for d in leading) and batch not in leading:
            raise GraphoptError(
                f"--batch {batch}: the model's inputs have a fixed leading dim "
                f"({', '.join(map(str, sorted(set(leading))))}); it cannot run other batch sizes"
            )
    bound, _ = resolve_input_shapes(model, input_shapes, batch=batch)
    for name, shape in bound.items():
        if shape is None or any(not isinstance(d, int) for d in shape):
            shown = "unknown" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
            if shape and isinstance(shape[0], int):  # the batch is bound: --batch cannot help
                example = "x".join(str(d) if isinstance(d, int) else "N" for d in shape)
                raise GraphoptError(
                    f"input '{name}' has shape {shown}: bind its other dims with "
                    f"--input-shape {name}={example}"
                )
            raise GraphoptError(
                f"input '{name}' has shape {shown}: bind its dims with "
                f"--input-shape {name}=... or --batch N"
            )
    return bound


def profile_model(
    model: onnx.ModelProto,
    *,
    name: str = "model",
    path: str | os.PathLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batches: Sequence[int | None] = (None,),
    latency: bool = True,
    measure_memory: bool = True,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    strict: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Profile `model` at each batch size (None: the shapes as given/declared)."""
    params = count_params(model)
    serialized = model.ByteSize() if params.bytes < 2**31 - 2**20 else params.bytes
    file_bytes = None
    if path is not None and os.path.exists(path):
        file_bytes = os.path.getsize(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    threads = threads or default_threads()
    prof = Profile(name, file_bytes, serialized, len(model.graph.node), opset, params,
                   threads=threads if latency else None)
    session = None
    for batch in batches:
        bound = _bind(model, input_shapes, batch)
        if progress:
            progress(f"counting FLOPs (batch {batch})" if batch is not None else "counting FLOPs")
        info = infer_shapes(model, bound)
        missing = unknown_tensors(model, info)
        if missing and not strict:
            if progress:
                progress("running the model once for data-dependent shapes")
            found = shapes_from_run(model, info, missing)
            if found:
                note = (f"{len(found)} tensor shape(s) shape inference could not derive were "
                        "taken from one onnxruntime run on random inputs")
                if note not in prof.notes:
                    prof.notes.append(note)
        macs = count_macs(model, strict=strict, shapes=info)
        acts = estimate_activation_memory(model, shapes=info)
        bp = BatchProfile(batch, bound, macs, acts)
        if latency:
            if session is None:
                if progress:
                    progress("creating onnxruntime session")
                session = make_session(path if path is not None else model, threads)
            bp.latency = measure_latency(model, bound, batch=batch, threads=threads, warmup=warmup,
                                         runs=runs, session=session, progress=progress)
        prof.batches.append(bp)
    if prof.first.macs.unresolved:
        prof.notes.append(f"{len(prof.first.macs.unresolved)} node(s) with data-dependent shapes "
                          "are not counted")
    if prof.first.macs.uncounted:
        prof.notes.append("no cost model (counted 0): " + ", ".join(
            f"{op} x{n}" for op, n in prof.first.macs.uncounted.items()))
    if measure_memory:
        if progress:
            progress("measuring session memory in a subprocess")
        prof.measured_memory = measure_session_memory(
            path if path is not None else model, prof.first.input_shapes, threads=threads)
    return prof
