"""MetaSchedule tuning for `graphopt compile --tune-trials N` (used by graphopt.codegen).

The heaviest tasks holding `share` of the FLOPs are tuned; the records go to a JSON
database under the tuning cache, in a folder per (target, device): records measured on
this machine (LocalRunner) are reused only for builds on this machine, records measured
over RPC (`graphopt.device.rpc_runner`) only for that device — each folder holds a
`measured-on.json` that says which.

A task whose every trial failed (run time 1e10: timeouts on a loaded machine, a device
that went away) has no result: graphopt says so (a warning with the runner's reason, in
the result's notes), keeps TVM's default schedule for it, and a later build tunes it again.

Progress: the measured trials are counted on graphopt.progress ("tuning (trials
measured)", out of the budget), which the CLI shows as a bar.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import progress as _progress
from .errors import GraphoptError

log = logging.getLogger(__name__)

DEFAULT_TUNE_SHARE = 0.9
# MetaSchedule's LocalRunner waits 30 s per candidate; on a loaded 2-core machine the
# popen worker alone can take longer, and then every trial "fails".
LOCAL_RUNNER_TIMEOUT = 300
BUILDER_TIMEOUT = 300
SPIN_ENV = "TVM_THREAD_POOL_SPIN_COUNT"   # read when TVM's thread pool starts; 0: no spinning
# Mark the weights layout-free while tuning (see _fusion); off until measured to help here
PREPACK = False


@dataclass
class TuneInfo:
    trials: int                   # the budget asked for
    tasks: int = 0                # tuning tasks of the module
    tasks_selected: int = 0       # the heaviest tasks, holding `share` of the FLOPs
    tasks_tuned: int = 0          # selected tasks tuned in this run (the others: from the cache)
    tasks_failed: int = 0         # tuned now, but every trial failed: no result, default schedule
    share: float = 1.0            # FLOP share asked for
    flops_share: float = 1.0      # FLOP share of the selected tasks
    seconds: float = 0.0
    cache: str = ""               # the database folder of this (target, device)
    measured_on: str = "this machine"
    failures: list[str] = field(default_factory=list)  # one line per failed task

    def as_dict(self) -> dict:
        return dict(trials=self.trials, tasks=self.tasks, tasks_selected=self.tasks_selected,
                    tasks_tuned=self.tasks_tuned, tasks_failed=self.tasks_failed,
                    flops_share=round(self.flops_share, 4), seconds=round(self.seconds, 2),
                    cache=self.cache, measured_on=self.measured_on, failures=self.failures)


def cache_folder(root, ttarget, remote=None) -> tuple[Path, dict]:
    """The database folder for records of `ttarget` measured on `remote` (None: here)."""
    target_text = str(ttarget)
    if remote is None:
        import platform

        where = {"runner": "local", "machine": platform.machine(), "node": platform.node()}
        label = "local"
    else:
        where = {"runner": "rpc", **remote.as_dict()}
        where.pop("timeout_s", None)
        label = "rpc-" + remote.identity
    digest = hashlib.sha1(json.dumps([target_text, where], sort_keys=True).encode()).hexdigest()[:10]
    kind = re.sub(r"[^A-Za-z0-9.-]+", "-", label)[:60]
    folder = Path(root) / f"{kind}-{digest}"
    return folder, {"target": target_text, "measured_on": where}


def tuned_build(mod, ttarget, trials: int, cache, share: float, progress, *, remote=None,
                cross_gcc: str | None = None, prepack: bool | None = None):
    """(executable, TuneInfo): see the module docstring."""
    from .tvm_build import quiet_tvm

    prepack = PREPACK if prepack is None else prepack
    try:
        from tvm.s_tir import meta_schedule as ms
    except ImportError as e:
        raise GraphoptError(f"TVM's MetaSchedule cannot be loaded ({e}): "
                            "pip install 'graphopt[tvm]' (psutil, cloudpickle, xgboost)") from None
    root = Path(tempfile.gettempdir()) / "graphopt-tune" if cache is None else Path(cache)
    folder, stamp = cache_folder(root, ttarget, remote)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "measured-on.json").write_text(json.dumps(stamp, indent=2) + "\n")
    info = TuneInfo(trials=trials, cache=str(folder),
                    measured_on=remote.where if remote is not None else "this machine")
    t0 = time.perf_counter()
    with quiet_tvm():
        tasks = extract_tasks(mod, ttarget, prepack)
        selected, info.flops_share = heaviest(tasks, share)
        database = ms.database.JSONDatabase(work_dir=str(folder))
        todo = [t for t in selected if not has_result(database, t.dispatched[0])]
    info.share = share
    info.tasks, info.tasks_selected, info.tasks_tuned = len(tasks), len(selected), len(todo)
    log.info("%d tuning tasks, the %d heaviest hold %.1f%% of the FLOPs; %d of them already in "
             "the cache %s", len(tasks), len(selected), 100 * info.flops_share,
             len(selected) - len(todo), folder)
    if todo:
        if progress:
            progress(f"tuning {len(todo)} tasks with MetaSchedule ({trials} trials"
                     f"{', measured on ' + remote.where if remote is not None else ''})")
        _name_handlers(logging.getLogger("tvm.s_tir.meta_schedule"))
        terminal = os.dup(2)   # quiet_tvm points fd 2 at a capture file; the bar shows here
        try:
            with quiet_tvm(), _progress.task("tuning (trials measured)", trials) as counted:
                errors = FailureLog(counted, terminal)
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    todo, work_dir=str(folder), seed=0)
                if contexts:
                    ms.tune.tune_tasks(
                        tasks=contexts, task_weights=weights, work_dir=str(folder),
                        max_trials_global=trials,
                        num_trials_per_iter=max(4, min(64, trials // len(contexts))),
                        builder=_builder(ms, cross_gcc), runner=_runner(ms, remote), database=database,
                        measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                        + [errors.callback(ms)])
        finally:
            os.close(terminal)
        for t in todo:
            if not has_result(database, t.dispatched[0]):
                info.tasks_failed += 1
                reason = errors.reasons.get(t.task_name) or "no trial was measured"
                info.failures.append(f"{t.task_name}: {reason}")
        if info.tasks_failed:
            log.warning("tuning measured nothing for %d of %d tasks (every trial failed; they keep "
                        "TVM's default schedules and are tuned again next time): %s",
                        info.tasks_failed, len(todo), "; ".join(info.failures[:3]))
    info.seconds = time.perf_counter() - t0
    if progress:
        progress("building with the tuned schedules")
    with quiet_tvm():
        ex = _compile_tuned(database, mod, ttarget, prepack)
    return ex, info


def extract_tasks(mod, ttarget, prepack: bool) -> list:
    """MetaSchedule's tuning tasks of a Relax module: its fused TIR functions."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    with ttarget:
        fused = tvm.transform.Sequential(_fusion(relax, prepack))(mod)
    return ms.relax_integration.extract_tasks(fused, ttarget)


def _fusion(relax, prepack: bool) -> list:
    """The passes that make the tuning tasks (the fused TIR functions), the same before
    tuning and before applying the records so that the records' keys match. With
    `prepack` the weights (Relax constants) are marked layout-free: MetaSchedule's
    RewriteLayout postprocessor may then store them in the order its tiled loops read them
    (blocked, like onnxruntime's packed weights), and the rewrite of the constant weights
    is done once, at build time (SplitLayoutRewritePreproc + FoldConstant)."""
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    return passes + [relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else passes


def _compile_tuned(database, mod, ttarget, prepack: bool):
    """The Relax VM executable of `mod` with the database's schedules (MetaSchedule's
    compile_relax, plus the build-time weight rewrite of `prepack`); tasks without a record
    keep TVM's default (unscheduled) code."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # graphopt's targets are all llvm

    @tvm.transform.module_pass(opt_level=3)
    def pipeline(m, _ctx):
        m = tvm.transform.Sequential(cpu.library_dispatch_passes(ttarget) + _fusion(relax, prepack))(m)
        m = relax.transform.MetaScheduleApplyDatabase()(m)
        if prepack:
            m = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                          relax.transform.FoldConstant()])(m)
        return tvm.transform.Sequential(cpu.dataflow_lower_passes(ttarget) + cpu.finalize_passes(ttarget))(m)

    with ttarget, database, tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=ttarget, relax_pipeline=pipeline)


def _name_handlers(logger: logging.Logger) -> None:
    """MetaSchedule rebuilds its logging config from the names of the handlers on its
    logger and fails ('NoneType' object has no attribute 'format') on an unnamed one, which
    was seen on a later tuning run in the same process: drop those (its own are named)."""
    for h in list(logger.handlers):
        if h.get_name() is None:
            log.debug("removing an unnamed handler %r from %s", h, logger.name)
            logger.removeHandler(h)


class FailureLog:
    """What MetaSchedule measured: the first error message of each task's failed trials
    (builder or runner), and the count of measured candidates on `counted`
    (graphopt.progress), shown with fd 2 pointed back at `terminal` for the moment so the
    CLI's bar reaches the screen through quiet_tvm."""

    def __init__(self, counted: "_progress.Task | None" = None, terminal: int | None = None) -> None:
        self.reasons: dict[str, str] = {}
        self.counted, self.terminal = counted, terminal

    def record(self, task: str, builder_results, runner_results) -> None:
        """One measured batch of `task`'s candidates."""
        for b, r in zip(builder_results, runner_results):
            msg = b.error_msg or r.error_msg
            if msg and task not in self.reasons:
                self.reasons[task] = _reason(str(msg))
        if self.counted is not None:
            with _stderr_on(self.terminal):
                self.counted.advance(len(builder_results))

    def callback(self, ms):
        """A MetaSchedule measure callback that records each batch here."""
        from tvm.ir.utils import derived_object

        log_ = self

        @derived_object
        class _Collect(ms.measure_callback.PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                      runner_results):
                try:
                    name = str(task_scheduler.tasks_[task_id].ctx.task_name)
                except Exception:  # noqa: BLE001
                    name = str(task_id)
                log_.record(name, builder_results, runner_results)

        return _Collect()


@contextlib.contextmanager
def _stderr_on(fd: int | None) -> Iterator[None]:
    """fd 2 pointed at `fd` inside the block (None: left alone), restored after."""
    if fd is None or not _progress.active():
        yield
        return
    sys.stderr.flush()
    captured = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(captured, 2)
        os.close(captured)


def _reason(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:
        if re.search(r"timeout|timed out|error|refused|cannot|failed", ln, re.I) and not ln.startswith("File "):
            return ln[:200]
    return (lines[-1] if lines else "failed")[:200]


def warm_worker() -> None:
    """Initializer of MetaSchedule's popen workers. A fresh worker's first build imports
    tvm.s_tir.tensor_intrin, which parses hundreds of TVMScript functions (inspect.stack
    on each): ~10 CPU-seconds, minutes of wall time on a loaded machine, all counted in the
    first candidate's timeout — so every trial of a batch "failed". The initializer runs
    before any timed call (TVM's PopenWorker sends it without a timeout)."""
    # the candidates run with TVM's thread pool not spinning (graphopt's onnxruntime
    # sessions do not spin either): on a shared machine a spinning pool waits for a
    # descheduled thread at every kernel (10x on the digits CNN at load 6 on 2 cores)
    os.environ.setdefault(SPIN_ENV, "0")
    import tvm.s_tir.tensor_intrin  # noqa: F401
    from tvm.s_tir.meta_schedule import builder, runner  # noqa: F401


def _builder(ms, cross_gcc):
    kw = dict(timeout_sec=BUILDER_TIMEOUT, initializer=warm_worker, max_workers=1)
    if cross_gcc is not None:
        kw["f_export"] = functools.partial(export_shared, cross_gcc)
    return ms.builder.LocalBuilder(**kw)


def _runner(ms, remote):
    if remote is None:
        return ms.runner.LocalRunner(timeout_sec=LOCAL_RUNNER_TIMEOUT, initializer=warm_worker)
    from .device import rpc_runner

    return rpc_runner(remote, initializer=warm_worker)


def export_shared(gcc: str, mod) -> str:
    """MetaSchedule's f_export for a cross target: a shared library linked here with the
    cross gcc (the device need not have a compiler)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(gcc))
    return path


def heaviest(tasks: list, share: float) -> tuple[list, float]:
    """The fewest tasks (heaviest first) holding `share` of the FLOPs, and their share."""
    from tvm.s_tir.analysis import estimate_tir_flops

    flops = []
    for t in tasks:
        try:
            f = float(estimate_tir_flops(t.dispatched[0])) * max(int(t.weight), 1)
        except Exception:  # noqa: BLE001 - unknown: keep the task
            f = float("inf")
        flops.append(f)
    total = sum(f for f in flops if f != float("inf"))
    if share >= 1.0 or not total:
        return list(tasks), 1.0
    ranked = sorted(zip(tasks, flops), key=lambda p: -p[1])
    keep, acc = [], 0.0
    for t, f in ranked:
        if keep and acc >= share * total:
            break
        keep.append(t)
        acc += f if f != float("inf") else 0.0
    return keep, min(acc / total, 1.0)


FAILED_RUN = 1e9  # MetaSchedule records a failed trial as 1e10 s


def has_result(database, mod) -> bool:
    """Whether the database holds a measured (not failed) record for the workload."""
    try:
        if not database.has_workload(mod):
            return False
        top = database.get_top_k(database.commit_workload(mod), 1)
        return any(r.run_secs and min(float(s) for s in r.run_secs) < FAILED_RUN for r in top)
    except Exception:  # noqa: BLE001
        return False
