"""Counting instruments: weight bytes around every pass (`WeightCount`) and the fusion
hints after the pipeline (`FusionHints`); the measures themselves are analyses
(graphopt.analysis.weights, graphopt.analysis.hints)."""

from __future__ import annotations

import logging

from ..analysis.hints import fusion_hints
from ..analysis.weights import weight_bytes
from ..ir import Model
from ..pipeline import Instrument, Pass, PassContext, PassRecord, Report

log = logging.getLogger(__name__)


class WeightCount(Instrument):
    """Sets Report.bytes_before/after and each PassRecord's bytes with `weight_bytes`."""

    def __init__(self) -> None:
        self._pipeline_before = 0
        self._pass_before = 0

    def before_pipeline(self, model: Model, ctx: PassContext) -> None:
        self._pipeline_before = weight_bytes(model)

    def before_pass(self, p: Pass, model: Model, ctx: PassContext) -> None:
        self._pass_before = weight_bytes(model)

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        record.bytes_before = self._pass_before
        record.bytes_after = weight_bytes(model)

    def after_pipeline(self, model: Model, ctx: PassContext, report: Report) -> None:
        report.bytes_before = self._pipeline_before
        report.bytes_after = weight_bytes(model)


class FusionHints(Instrument):
    """Logs the hints once after the pipeline (a warning: it shows by default, not under -q)
    and keeps them in `report.extra["hints"]`."""

    def after_pipeline(self, model, ctx, report) -> None:
        ran = {r.name for r in report.records}
        hints = fusion_hints(model, ctx, ran)
        report.extra["hints"] = hints
        for h in hints:
            log.warning("hint: %s", h)
