"""Latency in a target runtime beside onnxruntime: the model as given and after
graphopt's passes for that runtime, each converted (and verified), then all timed
interleaved on one drawn input (medians). `graphopt profile --runtime` and
benchmarks/bench_export.py use it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .common import ort_timed_call, resolve_shapes, time_interleaved
from .driver import make_runner, target

log = logging.getLogger(__name__)

AS_GIVEN_SPEC = "static-shapes"   # shapes bound (the converters need them), nothing else


def profile_runtime(model_path: str | os.PathLike, runtime: str, workdir: Path, *, input_shapes: dict | None = None,
                    precision: str = "fp32", samples: list[dict] | None = None, runs: int = 20, warmup: int = 3,
                    threads: int = 2, variants: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows {variant, spec, nodes, ort_ms, runtime_ms, verification} for the model as
    given and with the runtime's default passes (or `variants`: label -> spec)."""
    from .. import io
    from ..verify.inputs import InputSpace
    from .driver import export_model

    mod = target(runtime)
    model = io.load(model_path)
    shapes = resolve_shapes(model, dict(input_shapes or {}))
    if variants is None:
        default = mod.INT8_SPEC if precision == "int8" else mod.DEFAULT_SPEC
        variants = {"as given": AS_GIVEN_SPEC, f"graphopt {default.removeprefix('static-shapes,')}": default}
    feeds = InputSpace.from_model(model, shapes).draw(1, 0)[0].feeds
    calls: dict[str, Any] = {}
    rows = []
    for i, (label, spec) in enumerate(variants.items()):
        out = workdir / f"v{i}{mod.SUFFIXES[0]}"
        res = export_model(model_path, runtime, out, spec=spec, precision=precision, input_shapes=shapes,
                           samples=samples, examples=4)
        runner = make_runner(runtime, res.output, model, shapes, threads=threads)
        calls[f"ort:{label}"] = ort_timed_call(res.model, feeds, threads)
        calls[f"rt:{label}"] = runner.timed_call(feeds)
        rows.append({"variant": label, "spec": spec, "nodes": len(res.model.graph.node), "precision": precision,
                     "verification": res.verification.summary, "runner": runner})
    timings = time_interleaved(calls, runs=runs, warmup=warmup)
    for r in rows:
        r["ort_ms"] = timings[f"ort:{r['variant']}"].median * 1e3
        r["runtime_ms"] = timings[f"rt:{r['variant']}"].median * 1e3
        r.pop("runner")
    return rows
