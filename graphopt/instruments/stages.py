"""An instrument that profiles the model after every pass that changed it (for reports).

It records MACs/FLOPs and, optionally, onnxruntime latency of the model at each stage in
`record.extra["profile"]`, and of the input model in `report.extra["input_profile"]`.
Place it after the verification instrument so a reverted pass is seen as reverted.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import onnx

from ..errors import GraphoptError
from ..ir import Model
from ..pipeline import Instrument, Pass, PassContext, PassRecord, Report

log = logging.getLogger(__name__)


def report_shapes(model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None) -> dict:
    """Shapes to profile with: the given ones, leading symbolic dims bound to 1."""
    from ..analysis.shapes import resolve_input_shapes

    bound, _ = resolve_input_shapes(model, given, batch=1)
    return {k: v for k, v in bound.items()
            if v is not None and all(isinstance(d, int) for d in v)}


class StageProfiler(Instrument):
    """Measure cost (and latency) of the model before the pipeline and after each change."""

    def __init__(self, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
                 latency: bool = True, threads: int | None = None, warmup: int = 5,
                 runs: int = 20, progress: Callable[[str], None] | None = None) -> None:
        self.input_shapes = dict(input_shapes or {})
        self.latency = latency
        self.threads = threads
        self.warmup = warmup
        self.runs = runs
        self.progress = progress
        self._input: dict | None = None

    def measure(self, proto: onnx.ModelProto) -> dict:
        # imported here, not at the top: the instruments package loads without the analyses
        from ..analysis.flops import count_macs
        from ..analysis.latency import measure_latency

        out: dict = {"nodes": len(proto.graph.node)}
        try:
            shapes = report_shapes(proto, self.input_shapes)
            counts = count_macs(proto, shapes, strict=False)
            out.update(macs=counts.total, flops=counts.flops)
            if self.latency:
                lat = measure_latency(proto, shapes, threads=self.threads, warmup=self.warmup,
                                      runs=self.runs, progress=self.progress)
                out.update(p50_ms=lat.p50 * 1e3, p90_ms=lat.p90 * 1e3, threads=lat.threads, runs=lat.runs)
        except GraphoptError as e:
            out["error"] = str(e)
        except Exception as e:  # a model a pass produced may not run; the report says so
            out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return out

    def before_pipeline(self, model: Model, ctx: PassContext) -> None:
        if not self.input_shapes and ctx.input_shapes:
            self.input_shapes = dict(ctx.input_shapes)
        if self.progress:
            self.progress("profiling the input model")
        self._input = self.measure(model.to_onnx())

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        if not record.changed or record.reverted:
            return None
        if self.progress:
            self.progress(f"profiling after {p.name}")
        record.extra["profile"] = self.measure(model.to_onnx())
        return None

    def after_pipeline(self, model: Model, ctx: PassContext, report: Report) -> None:
        if self._input is not None:
            report.extra["input_profile"] = self._input
