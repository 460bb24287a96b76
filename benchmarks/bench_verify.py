"""What verification costs: a pipeline's time with and without the verification instrument.

    python benchmarks/bench_verify.py [--runs 5] [--pipeline clean,fuse] [--no-cli] [--peers]

Model: full-size ResNet-50 as a framework exports it before any optimization
(graphopt.testing.archs.resnet50(): batch 1, 224x224, random weights, every
BatchNormalization separate), so `fuse` (fold-bn) changes it and that change is checked.
Verification at its defaults: 8 examples per check, onnxruntime with graph optimizations
off, 2 intra-op threads, allow_spinning=0.

Tables (medians of interleaved runs, ratios against verification off):
1. in-process `graphopt.optimize(model, pipeline)`: off / on (default: the input
   model's reference runs start on a worker thread while the passes run, each check
   inline) / on with `ahead=False` (nothing overlaps) / on with `background=True` (each
   check on a worker thread while the next passes run; graphopt/instruments/verify.py);
   wall time and process CPU time (all threads);
2. the whole CLI job (`graphopt model.onnx -p ... -o out.onnx`, process start to exit,
   load and save included): `--no-verify` vs default;
3. where one inline check's time goes, nothing overlapping (session creation,
   onnxruntime runs, the rest);
4. with --peers: one model-vs-model check, graphopt.verify.compare vs Polygraphy's
   Comparator (if installed), ResNet-50 vs itself after `clean,fuse`.
Results go to benchmarks/results/verify.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import graphopt  # noqa: E402
from graphopt.testing import archs  # noqa: E402
from graphopt.verify import runner as _runner  # noqa: E402

from common import cpu_name, interleaved_median, markdown_table  # noqa: E402


def optimize_job(model: onnx.ModelProto, spec: str, verify: bool, examples: int, **options):
    def job():
        return graphopt.optimize(model, spec, verify=verify, return_report=True,
                                 verify_options={"examples": examples, **options})
    return job


def cli_job(path: Path, out: Path, spec: str, verify: bool, examples: int):
    exe = Path(sys.executable).with_name("graphopt")
    cmd = [str(exe) if exe.exists() else "graphopt", str(path), "-p", spec, "-o", str(out), "-q",
           "--verify-examples", str(examples)] + ([] if verify else ["--no-verify"])

    def job():
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return job


def interleaved_wall_cpu(jobs: dict, runs: int, warmup: int = 1) -> dict:
    """Like common.interleaved_median, but also the process CPU time (all threads) of
    each job: on a shared machine wall time swings with the load, CPU time much less."""
    times = {k: ([], []) for k in jobs}
    for r in range(warmup + runs):
        for k, job in jobs.items():
            w0, c0 = time.perf_counter(), _cpu()
            job()
            if r >= warmup:
                times[k][0].append(time.perf_counter() - w0)
                times[k][1].append(_cpu() - c0)
    return {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished children (CLI jobs)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def check_breakdown(model: onnx.ModelProto, spec: str, examples: int) -> tuple[list, list]:
    """One inline run (ahead=False: nothing overlaps) with the runner's session creation
    and runs timed."""
    from graphopt.ir import Model

    spent = {"sessions": [0, 0.0], "runs": [0, 0.0], "exports": [0, 0.0]}
    init, run, export = _runner.Runner.__init__, _runner.Runner.run, Model.to_onnx

    def timed_export(self):
        t0 = time.perf_counter()
        try:
            return export(self)
        finally:
            spent["exports"][0] += 1
            spent["exports"][1] += time.perf_counter() - t0

    def timed_init(self, *a, **k):
        t0 = time.perf_counter()
        init(self, *a, **k)
        spent["sessions"][0] += 1
        spent["sessions"][1] += time.perf_counter() - t0

    def timed_run(self, feeds, cache=True):
        before = self.runs
        t0 = time.perf_counter()
        try:
            return run(self, feeds, cache)
        finally:
            if self.runs != before:
                spent["runs"][0] += 1
                spent["runs"][1] += time.perf_counter() - t0

    _runner.Runner.__init__, _runner.Runner.run, Model.to_onnx = timed_init, timed_run, timed_export
    try:
        _, report = optimize_job(model, spec, True, examples, ahead=False)()
    finally:
        _runner.Runner.__init__, _runner.Runner.run, Model.to_onnx = init, run, export
    checks = [(r.name, r.extra["verify"]) for r in report.records if r.changed]
    total = sum(v.get("seconds", 0.0) for _, v in checks)
    rows = [
        ("onnxruntime session creation", spent["sessions"][0], spent["sessions"][1]),
        ("onnxruntime runs (graph optimizations off)", spent["runs"][0], spent["runs"][1]),
        ("the rest (drawing inputs, digests, comparing, space probing)", "-",
         max(0.0, total - spent["sessions"][1] - spent["runs"][1])),
        ("all checks", len(checks), total),
        ("model snapshots (Model.to_onnx, outside the checks; one is the pipeline's own final export)",
         spent["exports"][0], spent["exports"][1]),
    ]
    return rows, checks


def compare_peers(model: onnx.ModelProto, spec: str, runs: int, examples: int) -> dict:
    from graphopt.verify import compare

    after = graphopt.optimize(model, spec, verify=False)
    jobs = {"graphopt compare": lambda: _ok(compare(model, after, "float", examples=examples, threads=2).ok)}
    try:
        import onnxruntime as ort
        from polygraphy.backend.onnxrt import OnnxrtRunner
        from polygraphy.comparator import CompareFunc, Comparator, DataLoader

        def poly():
            sessions = []
            for m in (model, after):
                so = ort.SessionOptions()
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                so.intra_op_num_threads = 2
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sessions.append(ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]))
            runners = [OnnxrtRunner(s, name=f"m{i}") for i, s in enumerate(sessions)]
            results = Comparator.run(runners, data_loader=DataLoader(iterations=examples))
            _ok(bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(rtol=1e-4, atol=1e-4))))

        jobs["polygraphy Comparator"] = poly
    except ImportError:
        print("polygraphy not installed: graphopt row only")
    return interleaved_median(jobs, runs=runs, warmup=1)


def _ok(flag: bool) -> None:
    if not flag:
        raise AssertionError("reported a difference")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pipeline", default="clean,fuse")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--no-cli", action="store_true", help="skip the whole-CLI-job table")
    ap.add_argument("--peers", action="store_true", help="add the one-check table against Polygraphy")
    args = ap.parse_args()

    model = archs.resnet50(image=args.image)
    spec, n = args.pipeline, args.examples
    jobs = {
        "verification off": optimize_job(model, spec, False, n),
        "on (default: reference runs ahead, each check inline)": optimize_job(model, spec, True, n),
        "on, ahead=False (no reference runs while the passes run)": optimize_job(model, spec, True, n, ahead=False),
        "on, background=True (checks overlap the next passes)": optimize_job(model, spec, True, n, background=True),
    }
    api = interleaved_wall_cpu(jobs, runs=args.runs, warmup=1)
    base_wall, base_cpu = api["verification off"]
    lines = [
        "# Verification cost",
        "",
        f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores, shared); model: ResNet-50 "
        f"(archs.resnet50(image={args.image}), batch 1, BatchNorm not folded); pipeline `{spec}`; "
        f"{n} examples per check (default); median of {args.runs} interleaved runs after a warm-up.",
        "",
        "Reproduce: `python benchmarks/bench_verify.py --runs "
        f"{args.runs}{' --no-cli' if args.no_cli else ''}{' --peers' if args.peers else ''}`",
        "",
        "## In-process: `graphopt.optimize(model, \"%s\")`" % spec,
        "",
        markdown_table(["verification", "wall (s)", "wall ratio", "CPU (s)", "CPU ratio"],
                       [(k, w, f"{w / base_wall:.2f}x", c, f"{c / base_cpu:.2f}x") for k, (w, c) in api.items()]),
        "",
        f"Load average while measuring: {os.getloadavg()[0]:.1f} (2 cores shared with other jobs).",
        "",
    ]
    if not args.no_cli:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "resnet50.onnx"
            onnx.save(model, src)
            cli = interleaved_wall_cpu({
                "graphopt --no-verify": cli_job(src, Path(tmp) / "off.onnx", spec, False, n),
                "graphopt (verification on)": cli_job(src, Path(tmp) / "on.onnx", spec, True, n),
            }, runs=args.runs, warmup=1)
        w0, c0 = cli["graphopt --no-verify"]
        lines += [f"## Whole CLI job: `graphopt resnet50.onnx -p {spec} -o out.onnx` (process start to exit)", "",
                  markdown_table(["job", "wall (s)", "wall ratio", "CPU (s)", "CPU ratio"],
                                 [(k, w, f"{w / w0:.2f}x", c, f"{c / c0:.2f}x") for k, (w, c) in cli.items()]),
                  ""]
    rows, checks = check_breakdown(model, spec, n)
    lines += ["## Where the checks' time goes (one inline run, ahead=False, nothing overlapping)", "",
              markdown_table(["part", "count", "seconds"], rows), "",
              "Hypothesis is not imported on this path: examples are drawn with a seeded numpy "
              "generator; hypothesis only searches and shrinks after a failure.", "",
              "Checked passes: " + "; ".join(
                  f"{name} ({v['summary']}, {v['contract']}, {v['model_runs']} model runs)" for name, v in checks), ""]
    runs, runs_s = rows[1][1], rows[1][2]
    if runs:
        lines += [f"Floor: {runs} inferences (each example through the model before and after the pass) took "
                  f"{runs_s:.2f} s, {runs_s / runs * 1000:.0f} ms each, against {base_wall:.2f} s for the whole "
                  f"pipeline without verification: these runs alone are {(base_wall + runs_s) / base_wall:.1f}x "
                  "the pipeline, before any session is created; by default the input model's runs overlap "
                  "the passes (and the other model's runs), which hides at most the passes' own time on "
                  "two cores. A ratio under 3x in-process would need fewer examples or cheaper inference "
                  "than onnxruntime with graph optimizations off.", ""]
    if args.peers:
        peers = compare_peers(model, spec, args.runs, n)
        first = next(iter(peers.values()))
        lines += ["## One A-vs-B check, ResNet-50 before/after the pipeline", "",
                  markdown_table(["tool", "median (s)"], [(k, v) for k, v in peers.items()],
                                 ratio_of=1, baseline=first if isinstance(first, float) else None,
                                 ratio_name="ratio to graphopt"), ""]
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / "verify.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
