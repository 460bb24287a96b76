"""The verification instrument: after every pass that changed the graph, check the
model against its state before the pass, under the pass's contract."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import VerificationError
from ..ir import Model
from ..pipeline import Instrument, Pass, PassContext, PassRecord, Report
from .compare import DEFAULT_EXAMPLES, SHRINK_SECONDS, CompareResult, SignatureMismatch, compare, save_repro
from .contracts import Contract, OutputCheck
from .inputs import InputSpace
from .runner import Runner

log = logging.getLogger(__name__)


class _Snapshot:
    """A model state: its proto, and (once built) its runner. Exported once, reused by
    the next check when the pass in between changed nothing or passed its check."""

    def __init__(self, proto: onnx.ModelProto, runner: Runner | None = None) -> None:
        self.proto = proto
        self.runner = runner


class VerifyInstrument(Instrument):
    """Checks every pass that changed the model (on by default).

    on_fail: "abort" raises VerificationError; "revert" restores the model as it was
        before the pass and goes on.
    seed, examples: drawn inputs per check (real samples from the PassContext first).
        Every check draws the same inputs (for one seed), so the reference outputs of a
        check are the previous check's already-computed outputs.
    repro_dir: where a failure's reproducer folder is written.
    shrink_seconds: time bound for shrinking a counterexample.
    rtol, atol: the float contract's tolerances (defaults in graphopt.verify.contracts).
    """

    def __init__(
        self, on_fail: str = "abort", seed: int = 0, examples: int = DEFAULT_EXAMPLES,
        repro_dir: str = "graphopt-repro", shrink_seconds: float = SHRINK_SECONDS,
        rtol: float | None = None, atol: float | None = None, threads: int = 2,
    ) -> None:
        if on_fail not in ("abort", "revert"):
            raise ValueError("on_fail must be 'abort' or 'revert'")
        if examples < 1:
            raise ValueError("examples must be at least 1")
        self.on_fail = on_fail
        self.seed = seed
        self.examples = examples
        self.repro_dir = repro_dir
        self.shrink_seconds = shrink_seconds
        self.rtol, self.atol = rtol, atol
        self.threads = threads
        self.failures: list[CompareResult] = []
        self.checks = 0
        self._snap: _Snapshot | None = None
        self._space: InputSpace | None = None
        self._space_key = None

    def before_pipeline(self, model: Model, ctx: PassContext) -> None:
        self._snap = None
        self._space = None

    def before_pass(self, p: Pass, model: Model, ctx: PassContext) -> None:
        if self._snap is None:
            self._snap = _Snapshot(model.to_onnx())

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: PassRecord) -> str | None:
        if not record.changed:
            record.extra["verify"] = {"status": "unchanged", "summary": ""}
            return None
        before = self._snap
        assert before is not None, "before_pass was not called"
        after = model.to_onnx()
        contract = Contract(p.contract, budget=dict(getattr(p, "budget", None) or {}),
                            **{k: v for k, v in (("rtol", self.rtol), ("atol", self.atol)) if v is not None})
        self.checks += 1
        try:
            result = compare(
                before.proto, after, contract, examples=self.examples, seed=self.seed,
                input_shapes=ctx.input_shapes, input_ranges=ctx.input_ranges, samples=ctx.samples,
                shrink_seconds=self.shrink_seconds, runner_a=before.runner,
                space=self._space_for(before.proto), threads=self.threads,
            )
        except SignatureMismatch as e:
            result = CompareResult(ok=False, contract=contract)
            result.worst = OutputCheck("(signature)", False, float("inf"), 0.0, "crash", str(e))
            result.counterexample_text = "no input (the signature changed)"
        if result.runner_a is not None:
            before.runner = result.runner_a
        if result.space is not None:
            self._space = result.space
        record.extra["verify"] = result.as_dict()
        if result.skipped:
            log.warning("pass '%s': verification skipped: %s", p.name, result.reason)
            self._snap = _Snapshot(after)
            return None
        if result.ok:
            log.info("pass '%s' verified: %s", p.name, result.summary)
            self._snap = _Snapshot(after, result.runner_b)
            return None
        self.failures.append(result)
        folder = Path(self.repro_dir) / f"{len(self.failures):02d}-{p.name}"
        try:
            save_repro(folder, before.proto, after, result, title=f"pass '{p.name}' ({p!r}) failed verification")
            record.extra["verify"]["repro"] = str(folder)
        except OSError as e:
            log.warning("could not save the reproducer to %s: %s", folder, e)
        msg = result.message(f"pass '{p.name}' changed what the model computes")
        if self.on_fail == "abort":
            raise VerificationError(msg)
        log.warning("%s; reverted it", msg)
        model.replace_with(Model.from_onnx(before.proto))
        record.extra["verify"]["summary"] = result.summary
        return "revert"

    def _space_for(self, proto: onnx.ModelProto) -> InputSpace | None:
        key = [(i.name, i.type.SerializeToString()) for i in proto.graph.input]
        if self._space is not None and key == self._space_key:
            return self._space
        self._space_key = key
        self._space = None
        return None

    def after_pipeline(self, model: Model, ctx: PassContext, report: Report) -> None:
        report.extra["verify"] = {"checks": self.checks, "failures": len(self.failures)}
        self._snap = None
