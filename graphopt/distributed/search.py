"""`graphopt search`: Optuna picks pipeline configurations, Ray builds and times them.

One trial = one point of the space (a pipeline spec). A Ray task builds it (optimizes the
input model, verified) and scores it (the user's --metric, else agreement with the input
model on the samples); builds run in parallel, `workers` at a time. Then a second task
times it against the input model (paired, interleaved: `measure.paired_latency`) while it
holds all of its node's `graphopt_measure` resource, of which every build holds a sliver
(see `cluster`): so no other trial builds or is timed on that node meanwhile. New builds
wait while a timing is queued, so timings are not starved.

Objectives (Optuna, multi-objective): latency ratio to the input model measured on the same
node (minimize), size in bytes (minimize), accuracy (maximize). Ratios rather than absolute
times are compared, so trials measured on different nodes stay comparable; each trial records
which node measured it, and absolute latencies of different node types are never compared.

The study lives in an Optuna RDB storage (SQLite in OUTDIR by default). Rerunning resumes:
finished trials (complete or failed with a reason) count toward --trials; a trial left
running by an interrupted run is marked failed ("interrupted") and its configuration queued
again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import GraphoptError
from . import cluster, tasks
from .space import Space, parse_space

log = logging.getLogger(__name__)

OBJECTIVES = ("latency_ratio", "size_bytes", "accuracy")
DIRECTIONS = ("minimize", "minimize", "maximize")
INTERRUPTED = "interrupted (the search stopped while it ran); its configuration was queued again"


@dataclass
class SearchResult:
    outdir: str
    study_name: str
    storage: str
    space: str
    input: dict
    trials: list[dict] = field(default_factory=list)
    pareto: list[int] = field(default_factory=list)
    best: dict[str, dict] = field(default_factory=dict)
    ran: int = 0  # trials run by this call (the rest came from the database)
    report: str = ""

    def as_dict(self) -> dict:
        return {"command": "search", "outdir": self.outdir, "study": self.study_name,
                "storage": self.storage, "space": self.space, "objectives": list(OBJECTIVES),
                "directions": list(DIRECTIONS), "input": self.input, "ran": self.ran,
                "pareto": self.pareto, "best": self.best, "report": self.report,
                "trials": self.trials}


def load_metric(text: str) -> Callable[[str], float]:
    """`module:function` or `path/to/file.py:function` -> the function. The module is sent to
    Ray workers by value, so it need not be installed on them."""
    mod_name, sep, fn_name = text.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise GraphoptError(f"bad --metric '{text}' (expected module:function or file.py:function)")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            if not os.path.isfile(mod_name):
                raise GraphoptError(f"--metric: {mod_name}: file not found")
            name = "graphopt_user_metric_" + hashlib.sha1(os.path.abspath(mod_name).encode()).hexdigest()[:8]
            spec = importlib.util.spec_from_file_location(name, mod_name)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod_name)
    except GraphoptError:
        raise
    except Exception as e:
        raise GraphoptError(f"--metric: cannot import {mod_name}: {tasks.one_line(e)}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise GraphoptError(f"--metric: {mod_name} has no function '{fn_name}'")
    if not module.__name__.startswith("graphopt."):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    return fn


def _sampler(kind: str, space: Space, trials: int, seed: int):
    import optuna

    if kind == "auto":
        kind = "grid" if space.size() <= trials else "tpe"
    if kind == "grid":
        class Grid(optuna.samplers.GridSampler):
            # GridSampler stops an optimize() loop when the grid is done; this search asks
            # and tells itself and counts its trials, so there is nothing to stop.
            def after_trial(self, study, trial, state, values) -> None:
                pass

        return Grid(space.grid(), seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise GraphoptError(f"unknown sampler '{kind}' (expected auto, grid, tpe, nsga2 or random)")


def _trial_row(t) -> dict:
    a = {**t.user_attrs, **t.user_attrs.get("result", {})}
    row = {"number": t.number, "state": t.state.name.lower(), "spec": a.get("spec"),
           "params": dict(t.params), "reason": a.get("reason", "")}
    if t.values:
        row.update(dict(zip(OBJECTIVES, t.values)))
        row["speedup"] = 1.0 / t.values[0] if t.values[0] > 0 else None
    for k in ("baseline_ms", "candidate_ms", "ratio_spread", "measured_on", "node_type",
              "built_on", "build_node_id", "measure_node_id", "submitted", "model", "build_seconds", "measure_t0", "measure_t1", "build_t0", "build_t1"):
        if k in a:
            row[k] = a[k]
    return row


def run_search(model: str, samples: list[dict], space_text: str, outdir: str, *, trials: int = 20,
               metric: str | None = None, storage: str | None = None, study_name: str | None = None,
               ray_address: str | None = None, workers: int | None = None, sampler: str = "auto",
               seed: int = 0, ctx_fields: dict | None = None, verify: bool = True,
               trial_timeout: float = 1800.0, threads: int = 1, rounds: int = 10,
               runs_per_block: int = 10, max_retries: int = 3, exclusive_measure: bool = True,
               on_trial: Callable[[dict], None] | None = None,
               progress: Callable[[str], None] | None = None) -> SearchResult:
    """Search `space_text` for `model`; results, best models and report go to `outdir`.

    `exclusive_measure=False` times trials on one CPU beside running builds (no measure
    resource): only for benchmarks/bench_search.py, to show what serializing avoids."""

    from .. import io
    from ..samples import check_samples

    optuna = cluster.require_optuna()
    ray = cluster.require_ray()
    if trials < 1:
        raise GraphoptError("--trials must be at least 1")
    if workers is not None and workers < 1:
        raise GraphoptError("--workers must be at least 1")
    if not samples:
        raise GraphoptError("search needs --samples (inputs for calibration, scoring and timing)")
    space = parse_space(space_text)
    metric_fn = load_metric(metric) if metric else None
    proto = io.load(model)
    check_samples(samples, [i.name for i in proto.graph.input
                            if i.name not in {t.name for t in proto.graph.initializer}])
    model_bytes = proto.SerializeToString()
    del proto
    outdir = os.path.abspath(outdir)
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise GraphoptError(f"{outdir}: output folder is a file")
    digest = hashlib.sha256(model_bytes + space.source.encode()).hexdigest()[:10]
    study_name = study_name or f"{os.path.splitext(os.path.basename(model))[0]}-{digest}"
    storage_url = storage or f"sqlite:///{os.path.join(outdir, 'search.db')}"
    sampler_obj = _sampler(sampler, space, trials, seed)
    if isinstance(sampler_obj, optuna.samplers.GridSampler) and trials > space.size():
        log.warning("the space has %d points: running %d trials, not %d", space.size(), space.size(), trials)
        trials = space.size()
    if storage is None:
        os.makedirs(outdir, exist_ok=True)  # the SQLite file goes there
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage_url, sampler=sampler_obj,
                                    directions=list(DIRECTIONS), load_if_exists=True)
    except Exception as e:  # bad URL, missing driver, unreachable database
        raise GraphoptError(f"--storage {storage_url}: {tasks.one_line(e)}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    os.makedirs(os.path.join(outdir, "trials"), exist_ok=True)
    study.set_user_attr("model", os.path.abspath(model))
    study.set_user_attr("space", space.source)
    study.set_user_attr("metric", metric or "agreement with the input model")
    TS = optuna.trial.TrialState

    # Resume: interrupted trials are failed and queued again; finished ones count.
    for t in study.get_trials(deepcopy=False, states=(TS.RUNNING, TS.WAITING)):
        if t.state == TS.RUNNING:
            study._storage.set_trial_user_attr(t._trial_id, "reason", INTERRUPTED)
            study.tell(t.number, state=TS.FAIL)
            study.enqueue_trial(dict(t.params))

    def finished() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.FAIL))
                   if t.user_attrs.get("reason") != INTERRUPTED)

    ctx = dict(ctx_fields or {})
    ctx["samples"] = samples
    feeds = samples[0]
    ran = 0
    input_info: dict[str, Any] = {"path": os.path.abspath(model), "size_bytes": len(model_bytes)}
    with cluster.connect(ray_address):
        cluster.check_measure_resource()
        workers = workers or cluster.build_cpus()
        if exclusive_measure:  # the measure resource as a per-node readers-writer lock
            build = ray.remote(tasks.build_trial).options(
                num_cpus=1, num_returns=2, max_retries=max_retries,
                resources={cluster.MEASURE_RESOURCE: cluster.BUILD_SHARE})
            measure = ray.remote(tasks.measure_trial).options(
                num_cpus=threads, resources={cluster.MEASURE_RESOURCE: 1}, max_retries=max_retries)
        else:  # benchmarks/bench_search.py: timing beside running builds, for comparison only
            build = ray.remote(tasks.build_trial).options(num_cpus=1, num_returns=2, max_retries=max_retries)
            measure = ray.remote(tasks.measure_trial).options(num_cpus=threads, max_retries=max_retries)
        base_ref = ray.put(model_bytes)
        samples_ref = ray.put(samples)
        ctx_ref = ray.put(ctx)
        ref_info = ray.get(ray.remote(tasks.reference).options(num_cpus=1, max_retries=max_retries)
                           .remote(base_ref, samples_ref, metric_fn))
        input_info["accuracy"] = ref_info["score"]
        ref_out = ray.put(ref_info["outputs"])

        building: dict[Any, tuple] = {}  # info ref -> (trial, data ref, submitted)
        measuring: dict[Any, tuple] = {}  # measure ref -> (trial, build info, data ref, submitted)
        to_run = max(0, trials - finished())

        # Each user attribute is one database transaction (about 40 ms on SQLite here), so a
        # trial's results go in one attribute, "result".
        def fail(trial, reason: str, info: dict | None = None) -> None:
            trial.set_user_attr("result", {k: v for k, v in (info or {}).items() if k in (
                "built_on", "build_node_id", "build_seconds", "build_t0", "build_t1")})
            trial.set_user_attr("reason", reason)
            study.tell(trial, state=TS.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
            if on_trial:
                on_trial({"number": trial.number, "state": "fail", "reason": reason})

        try:
            while to_run or building or measuring:
                while to_run and len(building) < workers and not (measuring and exclusive_measure):
                    trial = study.ask()
                    values = space.suggest(trial)
                    spec = space.spec_for(values)
                    trial.set_user_attr("spec", spec)
                    trial.set_user_attr("submitted", time.time())
                    info_ref, data_ref = build.remote(base_ref, spec, ctx_ref, verify, metric_fn, ref_out)
                    building[info_ref] = (trial, data_ref, time.monotonic())
                    to_run -= 1
                    ran += 1
                refs = list(building) + list(measuring)
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                now = time.monotonic()
                builds_before = len(building)
                for ref, (trial, data_ref, submitted) in list(building.items()):
                    if ref not in ready and now - submitted > trial_timeout:
                        ray.cancel(ref, force=True)
                        del building[ref]
                        fail(trial, f"timed out after {trial_timeout:g} s")
                if len(building) < builds_before or any(r in building for r in ready):
                    # a timing cannot start while a build holds its node: its clock starts
                    # (again) when a build ends, so waiting behind a hung build is not its fault
                    for r, (t, inf, d, _) in list(measuring.items()):
                        measuring[r] = (t, inf, d, now)
                # a timing waits for at most `workers` others on its node: the same limit
                for ref, (trial, info, data_ref, submitted) in list(measuring.items()):
                    if ref not in ready and now - submitted > trial_timeout:
                        ray.cancel(ref, force=True)
                        del measuring[ref]
                        fail(trial, f"timing timed out after {trial_timeout:g} s", info)
                for ref in ready:
                    if ref in building:
                        trial, data_ref, _ = building.pop(ref)
                        try:
                            info = ray.get(ref)
                        except ray.exceptions.RayError as e:
                            fail(trial, tasks.one_line(e))
                            continue
                        info = {**info, "built_on": info.get("host"), "build_node_id": info.get("node_id"),
                                "build_t0": info["t0"], "build_t1": info["t1"]}
                        if not info["ok"]:
                            fail(trial, info["reason"], info)
                            continue
                        m_ref = measure.remote(base_ref, data_ref, feeds, threads, rounds, runs_per_block)
                        measuring[m_ref] = (trial, info, data_ref, time.monotonic())
                    elif ref in measuring:
                        trial, info, data_ref, _ = measuring.pop(ref)
                        try:
                            lat = ray.get(ref)
                            data = ray.get(data_ref)
                        except ray.exceptions.RayError as e:
                            fail(trial, tasks.one_line(e), info)
                            continue
                        if not lat["ok"]:
                            fail(trial, f"measurement: {lat['reason']}", info)
                            continue
                        path = os.path.join(outdir, "trials", f"trial-{trial.number:04d}.onnx")
                        io_tmp = path + ".tmp"
                        with open(io_tmp, "wb") as f:
                            f.write(data)
                        os.replace(io_tmp, path)
                        attrs = {"built_on": info["built_on"], "build_node_id": info["build_node_id"],
                                 "build_seconds": info.get("build_seconds"),
                                 "build_t0": info["build_t0"], "build_t1": info["build_t1"],
                                 "measured_on": lat["host"], "measure_node_id": lat["node_id"],
                                 "node_type": lat["node_type"], "baseline_ms": lat["baseline_ms"],
                                 "candidate_ms": lat["candidate_ms"], "ratio_spread": lat["ratio_spread"],
                                 "measure_t0": lat["t0"], "measure_t1": lat["t1"], "model": path}
                        trial.set_user_attr("result", attrs)
                        values = [lat["ratio"], float(info["size"]), float(info["accuracy"])]
                        study.tell(trial, values)
                        if on_trial:
                            on_trial({"number": trial.number, "state": "complete", "values": values})
                        if progress:
                            progress(f"{finished()}/{trials} trials")
        finally:  # Ctrl-C or an error: do not leave trials running on the cluster
            for ref in list(building) + list(measuring):
                ray.cancel(ref, force=True)

    result = SearchResult(outdir, study_name, storage_url, space.source, input_info, ran=ran)
    all_trials = study.get_trials(deepcopy=False)
    result.trials = [_trial_row(t) for t in all_trials]
    complete = [t for t in all_trials if t.state == TS.COMPLETE]
    result.pareto = sorted(t.number for t in study.best_trials) if complete else []
    _write_best(result, complete)
    from .html import write_report

    result.report = write_report(os.path.join(outdir, "report.html"), result)
    tmp = os.path.join(outdir, ".search.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result.as_dict(), f, indent=2, default=str)
    os.replace(tmp, os.path.join(outdir, "search.json"))
    return result


def _write_best(result: SearchResult, complete: list) -> None:
    """OUTDIR/best-<objective>.onnx: the best complete trial for each objective (ties: the
    better of the other objectives in order, then the lower trial number)."""
    for i, (name, direction) in enumerate(zip(OBJECTIVES, DIRECTIONS)):
        have = [t for t in complete if os.path.exists(t.user_attrs.get("result", {}).get("model", ""))]
        if not have:
            continue
        sign = [1 if d == "minimize" else -1 for d in DIRECTIONS]
        order = [i] + [j for j in range(len(OBJECTIVES)) if j != i]
        best = min(have, key=lambda t: (tuple(sign[j] * t.values[j] for j in order), t.number))
        dst = os.path.join(result.outdir, f"best-{name.split('_')[0]}.onnx")
        shutil.copyfile(best.user_attrs["result"]["model"], dst)
        result.best[name] = {"trial": best.number, "path": dst, "spec": best.user_attrs.get("spec"),
                             "value": best.values[i]}
