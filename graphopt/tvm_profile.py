"""Where a compiled model spends its time, kernel by kernel: TVM and onnxruntime side by side.

    total_ms, kernels = tvm_kernel_times(executable, feeds_in_order, runs=10)
    total_ms, ops = ort_kernel_times(model, feeds, runs=10, threads=2)

TVM: the wheel (0.27) is built without the Relax VM profiler (`VirtualMachine(...,
profile=True)` is refused), so every call the VM makes — a fused TIR function (one
tuning task), or a VM builtin such as alloc_tensor — is timed through the VM's
instrument hook (`set_instrument`, called before and after each call). Per kernel:
median over `runs` runs of its summed time in one run. The hook costs a Python call per
kernel call, outside the timed span; the whole run's time is taken without the hook.

onnxruntime: its own profiler (`enable_profiling`), the per-node kernel times summed by
operator type (after its graph optimizations, so FusedConv, QLinear ops and the like are
what actually ran), per run; the whole run is timed on a session without the profiler.

Timings are of this machine at the moment: compare kernels within one profile, never
across machines.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class KernelTime:
    name: str        # the TIR function (TVM) or the operator type (onnxruntime)
    calls: int       # calls per run
    ms: float        # median milliseconds per run, all its calls together

    def as_dict(self) -> dict:
        return {"name": self.name, "calls": self.calls, "ms": round(self.ms, 4)}


def tvm_kernel_times(executable, args: list, runs: int = 10, warmup: int = 2,
                     function: str = "main") -> tuple[float, list[KernelTime]]:
    """(median ms of a whole run, kernels heaviest first) of a Relax executable run on
    the CPU with `args` (numpy arrays or TVM tensors, in the function's order)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(executable, dev)
    args = [a if not isinstance(a, np.ndarray) else tvm.runtime.tensor(np.ascontiguousarray(a), dev)
            for a in args]
    for _ in range(warmup):
        vm[function](*args)
    totals = []
    for _ in range(runs):   # the whole run, timed without the hook
        t0 = time.perf_counter()
        vm[function](*args)
        totals.append(time.perf_counter() - t0)
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []
    current: dict[str, float] = defaultdict(float)

    def instrument(func, symbol, before, ret, *rest):
        if before:
            started.append(time.perf_counter())
        else:
            current[str(symbol)] += time.perf_counter() - started.pop()
            if not per_run:
                calls[str(symbol)] += 1
        return 0   # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    for _ in range(runs):
        current.clear()
        vm[function](*args)
        per_run.append(dict(current))
    names = set().union(*per_run)
    kernels = [KernelTime(n, calls.get(n, 0), 1e3 * statistics.median(r.get(n, 0.0) for r in per_run))
               for n in names]
    kernels.sort(key=lambda k: -k.ms)
    return 1e3 * statistics.median(totals), kernels


def ort_kernel_times(model, feeds: dict, runs: int = 10, warmup: int = 2, threads: int = 2,
                     optimize: bool = True) -> tuple[float, list[KernelTime]]:
    """(median ms of a whole run, operator types heaviest first) from onnxruntime's
    profiler, with the session options graphopt uses everywhere (graphopt.runtime)."""
    import tempfile

    from . import runtime

    plain = runtime.session(model, threads=threads, optimize=optimize)
    for _ in range(warmup):
        plain.run(None, feeds)
    totals = []
    for _ in range(runs):   # the whole run, timed without the profiler
        t0 = time.perf_counter()
        plain.run(None, feeds)
        totals.append(time.perf_counter() - t0)
    so = runtime.options(threads, optimize=optimize)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="graphopt-ort-profile-"), "run")
    sess = runtime.session(model, so=so)
    for _ in range(warmup + runs):
        sess.run(None, feeds)
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
        os.rmdir(os.path.dirname(path))
    # each model_run event spans one run: warm-up runs are left out by position
    run_spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                       if e.get("cat") == "Session" and e.get("name") == "model_run")[warmup:]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in run_spans]
    calls: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        for i, (a, b) in enumerate(run_spans):
            if a <= e["ts"] <= b:
                per_run[i][op] += e["dur"] / 1e3
                if i == 0:
                    calls[op] += 1
                break
    names = set().union(*per_run) if per_run else set()
    ops = [KernelTime(n, calls.get(n, 0), statistics.median(r.get(n, 0.0) for r in per_run))
           for n in names]
    ops.sort(key=lambda k: -k.ms)
    return 1e3 * statistics.median(totals), ops
