"""The verification instrument: after every pass that changed the graph, check the
model against its state before the pass, under the pass's contract.

Scheduling: by default each check finishes before the next pass starts. With
background=True and on_fail="abort", a check runs on a worker thread while the next
passes run on the main thread (onnxruntime releases the GIL): checks run one at a time,
in pipeline order, each comparing the model just before and just after one pass under
that pass's own contract; a failure is raised -- naming the pass, with its shrunk
counterexample and reproducer -- at the next pass boundary, and at the latest when the
pipeline ends, so a failed pipeline never returns or writes a model. It is off by
default: on the 2-core benchmark machine it gained nothing measurable (the overlap is
bounded by the passes' own time, a tenth of the checks'); see
benchmarks/results/verify.md.

Ahead of the first check (`ahead=True`, the default): when the pipeline starts, a
worker thread builds the input model's runner and input space and runs the input model
on the inputs the first check will draw, while the passes run on the main thread
(onnxruntime releases the GIL). The session's Python-side preparation (SessionRecipe) is
done on the main thread first: done on the worker, it competed with the passes for the
GIL and took ten times longer. The first check that runs the model claims that runner:
reference outputs already computed are cache hits, and the rest are computed by the
worker while the check runs the model after the pass -- both models' runs overlap. A
pipeline that changes nothing only tells the worker to stop after its current step and
does not wait for it.

Evaluated and not done: batching all examples into one onnxruntime call (ResNet-50,
batch dim free: one batch-8 run took longer than eight batch-1 runs); running the two
models concurrently on one thread each (no faster than one after the other on two
threads); writing the output file while the last check runs (background checks with a
commit gate before the rename: no faster on two cores, the write competes with the
runs); checking a group of passes at once and bisecting on failure (a pass would no
longer be judged alone under its own contract, and compensating mistakes would pass
unnoticed).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx

from ..errors import GraphoptError, VerificationError
from ..ir import Model
from ..pipeline import Instrument, Pass, PassContext, PassRecord, Report
from ..verify.compare import (DEFAULT_EXAMPLES, SHRINK_SECONDS, CompareResult, SignatureMismatch, compare,
                              make_space, run_ahead, save_repro, unique_dir)
from ..verify.contracts import Contract, OutputCheck
from ..verify.inputs import InputSpace
from ..verify.noise import NoiseSource
from ..verify.runner import Runner, RunnerUnavailable, SessionRecipe
from ..verify.structure import computation_digest

log = logging.getLogger(__name__)


class _Snapshot:
    """A model state: its proto, and (once built) its runner. Exported once, reused by
    the next check when the pass in between changed nothing or passed its check."""

    def __init__(self, proto: onnx.ModelProto, runner: Runner | None = None) -> None:
        self.proto = proto
        self.runner = runner
        self._digests: dict[bool, str | None] = {}

    def digest(self, content: bool = True) -> str | None:
        """What the outputs are computed from (see graphopt.verify.structure); with
        `content=False` constants count by dtype and shape only (no weight hashing)."""
        if content not in self._digests:
            self._digests[content] = computation_digest(self.proto, content)
        return self._digests[content]

    def same_computation(self, other: "_Snapshot") -> bool:
        if self.digest(False) is None or self.digest(False) != other.digest(False):
            return False
        return self.digest() == other.digest()


class _Ahead:
    """The input model's reference outputs, computed on a worker thread while the first
    passes run (module doc). `ready` is set once the runner and the input space exist
    (or failed to: then `runner` is None and the first check builds its own)."""

    def __init__(self, snap: _Snapshot, ctx: PassContext, examples: int, seed: int, threads: int) -> None:
        self.snap = snap
        self.serves = [snap]   # snapshots with the same computation as `snap`
        self.runner: Runner | None = None
        self.space = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        # the Python-heavy preparation here, the onnxruntime calls on the worker
        try:
            recipe = SessionRecipe(snap.proto, threads)
        except Exception as e:  # noqa: BLE001 - onnxruntime missing or failing: the first check builds its own
            log.debug("no session recipe ahead of the first check: %s", e)
            recipe = None
        try:
            self.space = InputSpace.from_model(snap.proto, ctx.input_shapes, ctx.input_ranges)
        except Exception as e:  # noqa: BLE001 - the first check reports it
            log.debug("no input space ahead of the first check: %s", e)
            recipe = None
        args = (recipe, list(ctx.samples or []), examples, seed, threads)
        # not a daemon: a run in progress finishes before the interpreter exits
        self.thread = threading.Thread(target=self._work, args=args, name="graphopt-verify-ahead")
        self.thread.start()

    def _work(self, recipe, samples, examples, seed, threads) -> None:
        if self.space is None:
            self.ready.set()
            return
        try:
            runner = Runner(self.snap.proto, threads=threads, recipe=recipe)
            space = make_space(self.snap.proto, runner, space=self.space)
            self.runner, self.space = runner, space
        except RunnerUnavailable:
            return  # the first check says so, with the reason
        except Exception as e:  # noqa: BLE001 - the first check builds its own and reports it
            log.debug("verification ahead of the first check failed: %s", e)
            return
        finally:
            self.ready.set()
        if runner.backend == "onnxruntime" and space.deterministic:
            try:
                run_ahead(runner, space, samples, examples, seed, stop=self._stop.is_set)
            except Exception as e:  # noqa: BLE001 - never a thread traceback: the check raises it
                log.debug("verification ahead of the first check stopped: %s", e)
                self.error = e

    def claim(self) -> tuple[Runner | None, object]:
        """The worker's runner and space. A bad-input error the worker met (e.g. a
        sample lacking an input) is raised here, on the pipeline's thread, once."""
        self.ready.wait()
        if isinstance(self.error, GraphoptError):
            self.thread.join()
            raise self.error
        return self.runner, self.space

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait:
            self.thread.join()


class _Check:
    """One queued check: pass `p` turned `before` into `after`."""

    def __init__(self, p: Pass, before: _Snapshot, after: _Snapshot, contract: Contract,
                 record: PassRecord, ctx: PassContext, model: Model | None) -> None:
        self.p, self.before, self.after, self.contract = p, before, after, contract
        self.record, self.model = record, model
        # what the check reads from the context, as it was when the pass ran
        self.shapes, self.ranges, self.samples = ctx.input_shapes, ctx.input_ranges, ctx.samples
        self.result: CompareResult | None = None


class VerifyInstrument(Instrument):
    """Checks every pass that changed the model (on by default).

    on_fail: "abort" raises VerificationError; "revert" restores the model as it was
        before the pass and goes on.
    seed, examples: drawn inputs per check (real samples from the PassContext first;
        under a lossy contract, only the real samples when there are any).
        Every check draws the same inputs (for one seed), so the reference outputs of a
        check are the previous check's already-computed outputs.
    repro_dir: where a failure's reproducer folder is written.
    shrink_seconds: time bound for shrinking a counterexample.
    rtol, atol: the float contract's tolerances (defaults in graphopt.verify.contracts).
    threads: onnxruntime intra-op threads per session.
    background: with on_fail="abort", run each check on a worker thread, overlapping
        the next passes (module doc).
    ahead: compute the input model's reference outputs on a worker thread while the
        first passes run (module doc).
    """

    def __init__(
        self, on_fail: str = "abort", seed: int = 0, examples: int = DEFAULT_EXAMPLES,
        repro_dir: str = "graphopt-repro", shrink_seconds: float = SHRINK_SECONDS,
        rtol: float | None = None, atol: float | None = None, threads: int = 2,
        background: bool = False, ahead: bool = True,
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
        self.background = background
        self.ahead = ahead
        self._ahead: _Ahead | None = None
        self.failures: list[CompareResult] = []
        self.checks = 0
        self._snap: _Snapshot | None = None
        self._space: InputSpace | None = None
        self._space_key = None
        self._noise: NoiseSource | None = None   # the float noise of the pipeline's inputs (shared)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    # -- hooks ----------------------------------------------------------------------------
    def before_pipeline(self, model: Model, ctx: PassContext) -> None:
        self._finish(raise_error=False)
        self._stop_ahead(wait=True)   # a previous pipeline's worker, if still on its last step
        self._snap = _Snapshot(model.to_onnx())
        self._space = None
        self._space_key = None
        self._noise = None
        self._error = None
        if self.ahead:
            self._ahead = _Ahead(self._snap, ctx, self.examples, self.seed, self.threads)

    def before_pass(self, p: Pass, model: Model, ctx: PassContext) -> None:
        self._raise_if_failed()
        if self._snap is None:
            self._snap = _Snapshot(model.to_onnx())

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: PassRecord) -> str | None:
        self._raise_if_failed()
        if not record.changed:
            record.extra["verify"] = {"status": "unchanged", "summary": ""}
            return None
        before = self._snap
        assert before is not None, "before_pass was not called"
        contract = Contract(p.contract, budget=dict(getattr(p, "budget", None) or {}),
                            **{k: v for k, v in (("rtol", self.rtol), ("atol", self.atol)) if v is not None})
        self.checks += 1
        if self.background and self.on_fail == "abort":
            job = _Check(p, before, _Snapshot(model.to_onnx()), contract, record, ctx, None)
            record.extra["verify"] = {"status": "pending", "summary": ""}
            self._snap = job.after   # if this check fails, the pipeline stops anyway
            self._submit(self._run_check, job)
            return None
        self._wait()  # checks still running (none unless `background` was switched midway)
        job = _Check(p, before, _Snapshot(model.to_onnx()), contract, record, ctx, model)
        self._snap = job.after   # back to `before` if the check fails and the pass is reverted
        return self._run_check(job)

    def after_pipeline(self, model: Model, ctx: PassContext, report: Report) -> None:
        self._stop_ahead(wait=False)  # nothing claimed it: the pipeline changed nothing
        self._finish(raise_error=True)
        report.extra["verify"] = {"checks": self.checks, "failures": len(self.failures)}
        self._snap = None

    def pipeline_failed(self, model: Model, ctx: PassContext, error: BaseException) -> None:
        self._stop_ahead(wait=False)
        self._finish(raise_error=False)
        self._snap = None

    def _stop_ahead(self, wait: bool) -> None:
        if self._ahead is not None:
            self._ahead.stop(wait)
            if wait:
                self._ahead = None

    def _claim_ahead(self, before: _Snapshot) -> _Ahead | None:
        """The worker's runner for `before` if it is the model the worker runs."""
        ahead = self._ahead
        if ahead is None or before not in ahead.serves:
            return None
        runner, space = ahead.claim()
        if runner is None:
            return None
        before.runner = runner
        self._space, self._space_key = space, _space_key(before.proto)
        return ahead

    # -- the checks ---------------------------------------------------------------------------
    def _run_check(self, job: _Check) -> str | None:
        if self._error is not None:  # an earlier check failed: the pipeline is stopping
            job.record.extra["verify"] = {"status": "skipped", "summary": "skipped: an earlier check failed"}
            return None
        p, before, after, contract, record = job.p, job.before, job.after, job.contract, job.record
        if before.same_computation(after):
            # the same ops on the same values in the same order: bit-identical outputs
            record.extra["verify"] = {"status": "ok", "contract": contract.describe(), "model_runs": 0,
                                      "summary": "same computation (structural)"}
            log.info("pass '%s' verified structurally: the outputs' computation is unchanged", p.name)
            after.runner = before.runner
            if self._ahead is not None and before in self._ahead.serves:
                self._ahead.serves.append(after)  # the worker's outputs hold for `after` too
            return None
        ahead = self._claim_ahead(before)
        done_ahead = before.runner.runs if ahead is not None else 0
        try:
            result = compare(
                before.proto, after.proto, contract, examples=self.examples, seed=self.seed,
                input_shapes=job.shapes, input_ranges=job.ranges, samples=job.samples,
                shrink_seconds=self.shrink_seconds, runner_a=before.runner,
                space=self._space_for(before.proto), threads=self.threads,
                noise=self._noise if contract.kind == "float" else None,
                label=f"verifying {p.name}",
            )
        except SignatureMismatch as e:
            result = CompareResult(ok=False, contract=contract)
            result.worst = OutputCheck("(signature)", False, float("inf"), 0.0, "crash", str(e))
            result.counterexample_text = "no input (the signature changed)"
        finally:
            if ahead is not None:
                self._stop_ahead(wait=True)
        if ahead is not None and result.runner_a is ahead.runner and result.runner_b is not None:
            # the worker's runs were this check's reference runs, made ahead of it
            result.runs_ahead = done_ahead
            result.model_runs = ahead.runner.runs + result.runner_b.runs
        job.result = result
        if result.runner_a is not None:
            before.runner = result.runner_a
        if result.space is not None:
            self._space = result.space
        record.extra["verify"] = result.as_dict()
        if contract.kind == "float":
            if result.noise is not None and result.noise.available:
                self._noise = result.noise   # the next float checks reuse its runs
        elif contract.kind == "lossy":
            self._noise = None   # a lossy pass moves the outputs past float noise: measure afresh
        for note in result.notes:
            if "NOT compared" in note or "not checked" in note:
                log.warning("pass '%s': %s", p.name, note)
        if result.skipped:
            log.warning("pass '%s': verification skipped: %s", p.name, result.reason)
            return None
        if result.ok:
            log.info("pass '%s' verified: %s", p.name, result.summary)
            after.runner = result.runner_b
            return None
        with self._lock:
            self.failures.append(result)
            n = len(self.failures)
        folder: Path | str = Path(self.repro_dir) / f"<date-time>-{n:02d}-{p.name}"
        try:
            folder = unique_dir(self.repro_dir, f"{n:02d}-{p.name}")
            save_repro(folder, before.proto, after.proto, result, title=f"pass '{p.name}' ({p!r}) failed verification")
            record.extra["verify"]["repro"] = str(folder)
        except OSError as e:
            log.warning("could not save the reproducer to %s: %s", folder, e)
        if result.worst is not None and result.worst.measure == "rejected":
            why = result.worst.detail.split(": ", 1)[-1]
            msg = (f"pass '{p.name}' made the model unloadable: onnxruntime ran it before the pass and "
                   f"rejects it after: {why}" + (f"; reproducer in {result.repro}" if result.repro else ""))
        else:
            msg = result.message(f"pass '{p.name}' changed what the model computes")
        if self.on_fail == "abort" or job.model is None:
            raise VerificationError(msg)
        log.warning("%s; reverted it", msg)
        job.model.replace_with(Model.from_onnx(before.proto))
        self._snap = before
        record.extra["verify"]["summary"] = result.summary
        return "revert"

    def _space_for(self, proto: onnx.ModelProto) -> InputSpace | None:
        key = _space_key(proto)
        if self._space is not None and key == self._space_key:
            return self._space
        self._space_key = key
        self._space = None
        return None

    # -- the worker ---------------------------------------------------------------------------
    def _submit(self, fn, *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphopt-verify")
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(self._collect)
        self._pending.append(fut)

    def _collect(self, fut: Future) -> None:
        e = fut.exception()
        if e is not None:
            with self._lock:
                if self._error is None:
                    self._error = e

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._finish(raise_error=True)

    def _wait(self) -> None:
        for fut in self._pending:
            fut.exception()  # waits; errors are collected by _collect
        self._pending = [f for f in self._pending if not f.done()]
        self._raise_if_failed()

    def _finish(self, raise_error: bool) -> None:
        """Wait for the worker and raise the first failure."""
        for fut in self._pending:
            fut.exception()
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        err, self._error = self._error, None
        if raise_error and err is not None:
            raise err


def _space_key(proto: onnx.ModelProto) -> list:
    return [(i.name, i.type.SerializeToString()) for i in proto.graph.input]
