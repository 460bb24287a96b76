"""Where TVM's time goes on the host, kernel by kernel, beside onnxruntime's kernels (issue 18).

    python benchmarks/profile_tvm.py [--models digits_cnn,ppocr_cls,ppocr_rec]
        [--tune-cache DIR --tune-trials N --tuned digits_cnn [--prepack]] [--runs 20] [--top 8]
        [--out results/compile.md]

For each model (the bench_compile models, the same shapes): the graphopt front end, then

- TVM untuned (`graphopt compile`'s default build) and, for the models in --tuned, the
  tuned build from --tune-cache (graphopt.tuning, every task; tasks missing from the cache
  are tuned now with --tune-trials; --prepack: weights marked layout-free, see
  graphopt.tuning._fusion): each fused TIR function's time per run, through the Relax VM's
  instrument hook (graphopt.tvm_profile), with its estimated GFLOP and GFLOP/s;
  onnxruntime's Conv kernels are credited with the FLOPs of TVM's conv2d functions;
- onnxruntime (all optimizations, 2 threads, spinning off): its profiler's kernel time per
  operator type.

The section "## Where the time goes" of --out is rewritten. TVM runs with TVM_NUM_THREADS=2
and TVM_THREAD_POOL_SPIN_COUNT=0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")
# TVM's thread pool does not spin, as onnxruntime does not (allow_spinning=0): a spinning pool
# on a shared machine waits at every kernel for a descheduled thread
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_compile import model_zoo, replace_section  # noqa: E402
from common import cpu_name, markdown_table  # noqa: E402

from graphopt import codegen, tvm_profile  # noqa: E402

HEADING = "## Where the time goes (per-kernel profile)"


def kernel_flops(mod, target, fused: bool) -> dict[str, float]:
    """Estimated FLOPs of each TIR function as the build names it: LegalizeOps alone (the
    untuned build's functions) or LegalizeOps + fusion (the tuned build's)."""
    import tvm
    from tvm import relax
    from tvm.s_tir.analysis import estimate_tir_flops

    passes = [relax.transform.LegalizeOps()]
    if fused:
        passes += [relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                   relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with codegen.quiet_tvm(), target:
        lowered = tvm.transform.Sequential(passes)(mod)
    out = {}
    for gv, func in lowered.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                out[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
            except Exception:  # noqa: BLE001 - unknown: shown as '-'
                pass
    return out


def _base_name(name: str, known: dict) -> str:
    """`name` as kernel_flops knows it: a rebuild renames functions (a '_prepacked' suffix,
    a '1' appended by TVM's name deduplication); '-' is shown where nothing matches."""
    name = name.removesuffix("_prepacked")
    while name not in known and name.endswith("1") and len(name) > 1:
        name = name[:-1]
    return name


def rows_for(label: str, total: float, kernels, flops: dict, top: int) -> list[list]:
    summed = sum(k.ms for k in kernels) or 1.0
    rows = []
    for k in kernels[:top]:
        f = flops.get(_base_name(k.name, flops))
        rows.append([label, k.name, k.calls, f"{k.ms:.3f}", f"{100 * k.ms / summed:.0f}%",
                     f"{f / 1e9:.3f}" if f else "-",
                     f"{f / (k.ms / k.calls) / 1e6:.1f}" if f and k.ms else "-"])
    rest = kernels[top:]
    if rest:
        rows.append([label, f"({len(rest)} more)", sum(k.calls for k in rest),
                     f"{sum(k.ms for k in rest):.3f}", f"{100 * sum(k.ms for k in rest) / summed:.0f}%", "", ""])
    rows.append([label, "**whole run**", "", f"**{total:.3f}**", "", "", ""])
    return rows


def profile_model(name, model, given, *, cache, trials, runs, top, tuned) -> tuple[list[list], list[str]]:
    shapes = codegen.static_input_shapes(model, given)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    opt, _ = codegen.front_end(model, codegen.DEFAULT_SPEC, shapes, verify=False)
    mod = codegen.import_onnx(opt, shapes)
    host = codegen.resolve_target("host")
    ttarget = host.tvm_target()
    args = [feeds[k] for k in shapes]
    builds = {"TVM untuned": (codegen.build(mod, host)[0], kernel_flops(mod, ttarget, fused=False))}
    notes = []
    if tuned:
        ex, info = codegen.build(mod, host, tune_trials=trials, tune_cache=cache, tune_share=1.0)
        builds["TVM tuned"] = (ex, kernel_flops(mod, ttarget, fused=True))
        notes.append(f"{name}: tuned build: {info.tasks} tasks, "
                     f"{info.tasks_selected - info.tasks_tuned} from the cache, {info.tasks_tuned} tuned "
                     f"now ({trials} trials), {info.tasks_failed} failed")
    shape = "x".join(map(str, next(iter(shapes.values()))))
    rows = []
    ort_total, ort_ops = tvm_profile.ort_kernel_times(model, feeds, runs=runs)
    for label, (ex, flops) in builds.items():
        total, kernels = tvm_profile.tvm_kernel_times(ex, args, runs=runs)
        kernels = [k for k in kernels if not k.name.startswith("vm.builtin")] + \
                  [k for k in kernels if k.name.startswith("vm.builtin")]
        rows += rows_for(f"{name} {shape} {label}", total, kernels, flops, top)
        if label == "TVM untuned":
            untuned_kernels = kernels
    # onnxruntime's convolutions do the FLOPs of TVM's conv2d functions (per call: the mean)
    untuned_flops = builds["TVM untuned"][1]
    conv_flops = sum(untuned_flops.get(k.name, 0.0) * k.calls for k in untuned_kernels
                     if k.name.startswith("conv2d"))
    ort_flops = {k.name: conv_flops / k.calls for k in ort_ops if k.name in ("Conv", "FusedConv") and k.calls}
    if len(ort_flops) != 1:
        ort_flops = {}   # Conv and FusedConv both ran: the split of the FLOPs is unknown
    rows += rows_for(f"{name} {shape} onnxruntime", ort_total, ort_ops, ort_flops, top)
    return rows, notes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits_cnn,ppocr_cls,ppocr_rec")
    ap.add_argument("--tune-cache", default=None)
    ap.add_argument("--tune-trials", type=int, default=0)
    ap.add_argument("--tuned", default="", help="models also profiled tuned (from --tune-cache)")
    ap.add_argument("--prepack", action="store_true", help="tune with the weights marked layout-free")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--out", default=str(HERE / "results" / "compile.md"))
    args = ap.parse_args()
    if args.prepack:
        from graphopt import tuning

        tuning.PREPACK = True
    zoo = model_zoo()
    rows, notes = [], []
    for name in [n for n in args.models.split(",") if n]:
        print(f"profile {name}", flush=True)
        model, given = zoo[name]
        r, n = profile_model(name, model, given, cache=args.tune_cache, trials=args.tune_trials,
                             runs=args.runs, top=args.top, tuned=name in args.tuned.split(","))
        rows += r
        notes += n
    load = os.getloadavg()
    table = markdown_table(["build", "kernel (TIR function / ORT op type)", "calls", "ms per run",
                            "share", "GFLOP per call", "GFLOP/s"], rows)
    cmd = (f"python benchmarks/profile_tvm.py --models {args.models} --runs {args.runs} --top {args.top}"
           + (f" --tune-cache DIR --tune-trials {args.tune_trials} --tuned {args.tuned}"
              + (" --prepack" if args.prepack else "") if args.tuned else ""))
    lines = [HEADING, "", f"`{cmd}`; CPU: {cpu_name()} ({os.cpu_count()} cores), TVM_NUM_THREADS=2 (not spinning), "
             f"onnxruntime 2 threads; load average {load[0]:.1f} at the end (the machine was shared "
             "with other jobs: absolute times are noisy, shares within one build are the signal).",
             "", table, ""] + [f"- {n}" for n in notes] + [""]
    replace_section(args.out, HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
