"""Benchmark of `-p clean` as a whole job (load, passes, checks, save) on BERT-base.

    /tmp/venv/bin/python benchmarks/bench_clean.py [--runs 3] [--quick]

The model is graphopt.testing.archs.bert() (BERT-base, ~420 MB of float32 weights,
Constant nodes as a TorchScript export leaves them), cached in benchmarks/.cache/.
`--quick` uses a 2-layer, hidden-256 variant instead. In one run, interleaved, each
repeated --runs times (median):

- baseline: onnx.load + onnx.save of the model;
- graphopt, as the `graphopt` command in a subprocess (`graphopt M -p clean --no-verify
  -q -o OUT`: process start, imports, load, onnx.checker, passes, checker, save) and
  in-process via graphopt.optimize_file (same work without process start and imports);
- onnx-simplifier (onnxsim.simplify), onnxslim (onnxslim.slim), onnxoptimizer
  (onnxoptimizer.optimize, its default passes) — each load + optimize + save, in-process.

Also measured: onnx.checker.check_model on the loaded model (graphopt runs it on the
input and on the output). Results go to stdout and benchmarks/results/clean.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, interleaved_median, markdown_table  # noqa: E402


def build_model(quick: bool) -> Path:
    from graphopt.testing import archs

    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)
    path = cache / ("bert_small.onnx" if quick else "bert_base.onnx")
    if not path.exists():
        kw = dict(layers=2, hidden=256, heads=4, intermediate=1024, vocab=8000) if quick else {}
        model = archs.bert(**kw)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    return path


def graphopt_command() -> list[str]:
    exe = shutil.which("graphopt") or str(Path(sys.executable).parent / "graphopt")
    return [exe]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    src = build_model(args.quick)
    out_dir = HERE / ".cache" / "out"
    out_dir.mkdir(exist_ok=True)
    outs = {k: out_dir / f"{k}.onnx" for k in ("loadsave", "cli", "api", "onnxsim", "onnxslim", "onnxoptimizer")}
    before = len(onnx.load(str(src)).graph.node)

    def loadsave():
        onnx.save(onnx.load(str(src)), str(outs["loadsave"]))

    def cli():
        subprocess.run(graphopt_command() + [str(src), "-p", "clean", "--no-verify", "-q",
                                             "-o", str(outs["cli"])], check=True)

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

    loaded = onnx.load(str(src))

    def checker():
        onnx.checker.check_model(loaded)

    jobs = {
        "onnx.load + onnx.save": loadsave,
        "graphopt -p clean (CLI, subprocess)": cli,
        "graphopt -p clean (API, in-process)": api,
        "onnx-simplifier": onnxsim_job,
        "onnxslim": onnxslim_job,
        "onnxoptimizer": onnxoptimizer_job,
        "onnx.checker.check_model (once)": checker,
    }
    # import the peers before timing so the in-process rows don't pay for imports
    import graphopt.api, graphopt.pipeline, onnxoptimizer, onnxsim, onnxslim  # noqa: F401,E401
    graphopt.pipeline.discover()
    res = interleaved_median(jobs, runs=args.runs)
    base = res["onnx.load + onnx.save"]
    key_out = dict(zip(jobs, ["loadsave", "cli", "api", "onnxsim", "onnxslim", "onnxoptimizer", None]))
    rows = []
    for name, secs in res.items():
        out = key_out[name]
        after = len(onnx.load(str(outs[out]), load_external_data=False).graph.node) \
            if out and outs[out].exists() and not isinstance(secs, Exception) else "-"
        rows.append([src.name, name, before, after, secs])
    table = markdown_table(["model", "tool", "nodes before", "nodes after", "seconds"], rows,
                           ratio_of=4, baseline=base, ratio_name="ratio to load+save")
    size = src.stat().st_size / 2**20
    text = (f"# `-p clean` as a whole job\n\nCPU: {cpu_name()}; model {src.name} ({size:.0f} MB, "
            f"{before} nodes); median of {args.runs} interleaved runs; "
            f"`python benchmarks/bench_clean.py{' --quick' if args.quick else ''}`\n\n{table}\n")
    print(text)
    if not args.quick:
        (HERE / "results" / "clean.md").write_text(text)
    shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
