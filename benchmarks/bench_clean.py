"""Benchmark of `-p clean` as a whole job (load, passes, checks, save) on BERT-base.

    python benchmarks/bench_clean.py [--runs 7] [--quick]

The model is graphopt.testing.archs.bert() (BERT-base: 1,265 nodes, ~418 MB of float32
weights, Constant nodes as a TorchScript export leaves them). It is generated once and
cached outside the repository, in $GRAPHOPT_BENCH_CACHE or ~/.cache/graphopt-bench.
`--quick` uses a 2-layer, hidden-256 variant instead (results are then not written).

In one run, interleaved round-robin, each job repeated --runs times (median):

- baseline: onnx.load + onnx.save of the model, in-process (the ratio column divides
  by this); the same in a fresh `python -c` process, for comparison with the CLI rows;
- graphopt as the `graphopt` command in a subprocess, with its default verification
  (every pass that changed the graph is checked numerically with onnxruntime) and with
  --no-verify: process start, imports, load, onnx.checker, passes, checker, save;
- graphopt in-process via graphopt.api.optimize_file (no verification instrument, same
  work as the --no-verify CLI without process start and imports);
- onnx-simplifier (onnxsim.simplify), onnxslim (onnxslim.slim), onnxoptimizer
  (onnxoptimizer.optimize, its default passes): each load + optimize + save, in-process.

After timing, the outputs are run once in onnxruntime on the same random input and the
largest difference from the original model's outputs is reported. Results go to stdout
and (full model only) to benchmarks/results/clean.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, interleaved_median, markdown_table, ort_session  # noqa: E402


def cache_dir() -> Path:
    d = Path(os.environ.get("GRAPHOPT_BENCH_CACHE") or Path.home() / ".cache" / "graphopt-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_model(quick: bool) -> Path:
    """The benchmark model, generated on first use and cached (deterministic: seed 0)."""
    from graphopt.testing import archs

    path = cache_dir() / ("bert_small.onnx" if quick else "bert_base.onnx")
    if not path.exists():
        kw = {"layers": 2, "hidden": 256, "heads": 4, "intermediate": 1024, "vocab": 8000} if quick else {}
        print(f"generating {path} ...", file=sys.stderr)
        model = archs.bert(**kw)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    return path


def graphopt_command() -> list[str]:
    exe = shutil.which("graphopt", path=str(Path(sys.executable).parent)) or shutil.which("graphopt")
    return [exe or str(Path(sys.executable).parent / "graphopt")]


def max_output_diff(src: Path, out: Path) -> str:
    """Largest |difference| between the outputs of src and out on one random input."""
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 1000, (2, 64), dtype=np.int64),
             "attention_mask": np.ones((2, 64), np.int64)}
    try:
        ref = ort_session(str(src), optimize=False).run(None, feeds)
        got = ort_session(str(out), optimize=False).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - report, do not crash the table
        return f"error: {type(e).__name__}"
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got)):
        return "outputs differ in shape"
    return f"{max(float(np.max(np.abs(r - g))) for r, g in zip(ref, got)):.1e}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write results/clean.md")
    args = ap.parse_args()

    src = build_model(args.quick)
    out_dir = cache_dir() / "out"
    out_dir.mkdir(exist_ok=True)
    keys = ("loadsave", "loadsave_proc", "cli", "cli_nv", "api", "onnxsim", "onnxslim", "onnxoptimizer")
    outs = {k: out_dir / f"{k}.onnx" for k in keys}
    before = len(onnx.load(str(src), load_external_data=False).graph.node)
    go = graphopt_command()

    def loadsave():
        onnx.save(onnx.load(str(src)), str(outs["loadsave"]))

    def loadsave_proc():
        subprocess.run([sys.executable, "-c", "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])",
                        str(src), str(outs["loadsave_proc"])], check=True)

    def cli():
        subprocess.run(go + [str(src), "-p", "clean", "-q", "-o", str(outs["cli"])], check=True)

    def cli_nv():
        subprocess.run(go + [str(src), "-p", "clean", "--no-verify", "-q", "-o", str(outs["cli_nv"])],
                       check=True)

    def api():
        from graphopt.api import optimize_file

        optimize_file(src, outs["api"], "clean")

    def onnxsim_job():
        import onnxsim

        model, ok = onnxsim.simplify(onnx.load(str(src)))
        if not ok:
            raise RuntimeError("onnxsim check failed")
        onnx.save(model, str(outs["onnxsim"]))

    def onnxslim_job():
        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a summary table
            onnxslim.slim(str(src), str(outs["onnxslim"]))

    def onnxoptimizer_job():
        import onnxoptimizer

        onnx.save(onnxoptimizer.optimize(onnx.load(str(src))), str(outs["onnxoptimizer"]))

    jobs = {
        "onnx.load + onnx.save (in-process, baseline)": (loadsave, "loadsave"),
        "onnx.load + onnx.save (fresh `python -c` process)": (loadsave_proc, "loadsave_proc"),
        "graphopt -p clean (CLI, default: verification on)": (cli, "cli"),
        "graphopt -p clean --no-verify (CLI)": (cli_nv, "cli_nv"),
        "graphopt -p clean (API optimize_file, in-process, no verification)": (api, "api"),
        "onnx-simplifier (onnxsim.simplify)": (onnxsim_job, "onnxsim"),
        "onnxslim (onnxslim.slim)": (onnxslim_job, "onnxslim"),
        "onnxoptimizer (default passes)": (onnxoptimizer_job, "onnxoptimizer"),
    }
    # import everything before timing so the in-process rows don't pay for imports
    import importlib

    for mod in ("graphopt.api", "onnxoptimizer", "onnxsim", "onnxslim"):
        importlib.import_module(mod)
    importlib.import_module("graphopt.pipeline").discover()
    cpu: dict[str, list[float]] = {name: [] for name in jobs}

    def with_cpu(name, fn):
        # CPU seconds (user + system, this process and its children) beside wall time:
        # on a shared machine wall time swings with the neighbours, CPU time much less.
        def job():
            r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            fn()
            r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(sum(b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime
                                 for a, b in ((r0, r1), (c0, c1))))
        return job

    res = interleaved_median({name: with_cpu(name, fn) for name, (fn, _) in jobs.items()}, runs=args.runs)
    base_name = next(iter(jobs))
    base = res[base_name]
    base_cpu = statistics.median(cpu[base_name]) if cpu[base_name] else None
    rows = []
    for name, secs in res.items():
        out = outs[jobs[name][1]]
        ok = out.exists() and not isinstance(secs, Exception)
        after = len(onnx.load(str(out), load_external_data=False).graph.node) if ok else "-"
        diff = max_output_diff(src, out) if ok and not name.startswith("onnx.load") else "-"
        cpu_s = statistics.median(cpu[name]) if cpu[name] else None
        cpu_ratio = f"{cpu_s / base_cpu:.2f}x" if cpu_s is not None and base_cpu else "-"
        rows.append([name, before, after, diff, cpu_s if cpu_s is not None else "-", cpu_ratio, secs])
    table = markdown_table(["tool", "nodes before", "nodes after", "max abs output diff", "CPU seconds",
                            "CPU ratio", "seconds"], rows,
                           ratio_of=6, baseline=base, ratio_name="ratio to load+save")
    size = src.stat().st_size / 2**20
    names = list(jobs)

    def ratio(a: str, b: str) -> str:
        x, y = res[a], res[b]
        return f"{x / y:.2f}x" if isinstance(x, float) and isinstance(y, float) else "-"

    notes = (
        f"`seconds` is the median wall time and the ratio column divides it by the in-process "
        f"load + save; `CPU seconds` is the median user + system time of the same runs (children "
        f"included), less sensitive to other load on a shared machine, and `CPU ratio` its ratio. "
        f"The CLI rows include process start and imports; against load + save in a fresh process "
        f"(row 2) the CLI takes {ratio(names[3], names[1])} with --no-verify and "
        f"{ratio(names[2], names[1])} with verification. The in-process API row has no "
        f"verification instrument. Max abs output diff: one onnxruntime run of each output "
        f"against the original model on the same random input (batch 2, sequence 64)."
    )
    text = (f"# `-p clean` as a whole job\n\nCPU: {cpu_name()} ({os.cpu_count()} cores, shared); "
            f"model {src.name} ({size:.0f} MB, {before} nodes); median of {args.runs} interleaved "
            f"runs; `python benchmarks/bench_clean.py{' --quick' if args.quick else ''}`\n\n{table}\n\n"
            f"{notes}\n")
    print(text)
    if not args.quick and not args.no_write:
        (HERE / "results" / "clean.md").write_text(text)
    shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
