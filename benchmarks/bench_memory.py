"""Peak resident memory of `graphopt MODEL -p clean` on a large model with external data.

    python benchmarks/bench_memory.py [--size-gb 2.16] [--runs 1] [--no-write]

The model is generated once and cached outside the repository ($GRAPHOPT_BENCH_CACHE or
~/.cache/graphopt-bench/memory-<size>/): a chain of MatMuls over square float32 weights,
with an Identity after each (which `noop` removes), a dead branch (`dce`) and one weight
stored twice (`cse` merges it), all weights in one external data file written piece by
piece (the generator itself never holds more than one weight).

Each measurement is one fresh process that starts `graphopt` as its child and reports
resource.getrusage(RUSAGE_CHILDREN).ru_maxrss (the child's peak resident set, file-backed
pages of memory-mapped weights included). Rows: `--no-verify` and with verification (the
default), each as a ratio to the model's size on disk (model file + data file), next to
onnx.load + onnx.save of the same model in a fresh process; then the model of the
verification row with its weights inside the .onnx file (no external data), `--no-verify`
and onnx.load + onnx.save. The machine is shared: the
rows run one after the other, never two at once. Results go to stdout and (unless
--no-write) to benchmarks/results/memory.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name  # noqa: E402

DIM = 4096  # weights are DIM x DIM float32: 64 MiB each


def cache_dir() -> Path:
    d = Path(os.environ.get("GRAPHOPT_BENCH_CACHE") or Path.home() / ".cache" / "graphopt-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def generate(folder: Path, size_bytes: int, dim: int = DIM, seed: int = 0) -> Path:
    """Write model.onnx + model.onnx.data into `folder` (about `size_bytes` of weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    if path.exists() and (folder / "model.onnx.data").exists():
        return path
    per = dim * dim * 4
    count = max(2, round(size_bytes / per))
    rng = np.random.default_rng(seed + 1)
    inits, nodes = [], []
    prev = "x"
    scale = np.float32(1.0 / np.sqrt(dim))
    tmp_data = folder / "model.onnx.data.tmp"
    with open(tmp_data, "wb") as f:
        offset = 0
        for i in range(count):
            name = f"W{i}"
            if i in (0, count - 1):  # the last weight repeats W0's bytes: cse merges the two
                w = np.random.default_rng(seed).standard_normal((dim, dim), dtype=np.float32) * scale
            else:
                w = rng.standard_normal((dim, dim), dtype=np.float32) * scale
            f.write(w.tobytes())
            del w
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[dim, dim],
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(per))):
                t.external_data.add(key=k, value=v)
            inits.append(t)
            offset += per
            nodes.append(helper.make_node("MatMul", [prev, name], [f"m{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Identity", [f"m{i}"], [f"i{i}"], name=f"id{i}"))
            prev = f"i{i}"
    nodes.append(helper.make_node("Neg", ["x"], ["dead"], name="dead"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", dim])
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    os.replace(tmp_data, folder / "model.onnx.data")
    return path


def inline_copy(path: Path) -> Path:
    """The same model with its weights inside the .onnx file (generated once, beside it)."""
    out = path.parent / "inline" / "model.onnx"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        model = onnx.load(path)
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        del model
        os.replace(tmp, out)
    return out


def model_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.stderr.write(r.stderr[-2000:])\n"
)


def peak_rss(cmd: list[str]) -> tuple[int, float, str]:
    """(peak RSS in bytes, wall seconds, stderr tail) of `cmd` run as a fresh process's child."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    rc, kib = r.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{cmd[:3]} exited {rc}: {r.stderr.strip()[-500:]}")
    return int(kib) * 1024, seconds, r.stderr


def graphopt_cmd() -> str:
    return shutil.which("graphopt") or str(Path(sys.executable).parent / "graphopt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=2.16, help="weights in GB (10^9 bytes)")
    ap.add_argument("--verify-size-gb", type=float, default=None,
                    help="model size for the row with verification (default: --size-gb; it peaks "
                         "at about 7x the model, so on a shared machine give a smaller one)")
    ap.add_argument("--runs", type=int, default=1, help="measurements per row (the peak's median)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/memory.md")
    ap.add_argument("--rows", default="no-verify,verify,onnx,inline,onnx-inline",
                    help="rows to measure (inline rows use the --verify-size-gb model with its "
                         "weights inside the .onnx file)")
    args = ap.parse_args()

    models = {}
    for key, gb in (("main", args.size_gb), ("verify", args.verify_size_gb or args.size_gb)):
        folder = cache_dir() / f"memory-{gb:g}gb"
        t0 = time.perf_counter()
        path = generate(folder, int(gb * 1e9))
        models[key] = (path, model_size(path), len(onnx.load(path, load_external_data=False).graph.node))
        print(f"model {path} ({models[key][1] / 1e9:.2f} GB on disk; ready in {time.perf_counter() - t0:.0f} s)")
    if any(r.endswith("inline") for r in args.rows.split(",")):
        path = inline_copy(models["verify"][0])
        models["inline"] = (path, path.stat().st_size, models["verify"][2])
    rows = []
    wanted = args.rows.split(",")

    def jobs(path: Path, out_dir: Path) -> dict:
        return {
            "no-verify": ("graphopt MODEL -p clean --no-verify -o OUT",
                          [graphopt_cmd(), str(path), "-p", "clean", "--no-verify", "-q", "-o", str(out_dir / "out.onnx")]),
            "verify": ("graphopt MODEL -p clean -o OUT (verification on)",
                       [graphopt_cmd(), str(path), "-p", "clean", "-q", "-o", str(out_dir / "out.onnx")]),
            "onnx": ("onnx.load + onnx.save (external data), fresh process",
                     [sys.executable, "-c",
                      "import onnx, sys; m = onnx.load(sys.argv[1]); "
                      "onnx.save(m, sys.argv[2], save_as_external_data=True, location='o.data')",
                      str(path), str(out_dir / "onnx.onnx")]),
            "inline": ("graphopt MODEL -p clean --no-verify -o OUT, weights inside the .onnx",
                       [graphopt_cmd(), str(path), "-p", "clean", "--no-verify", "-q", "-o", str(out_dir / "out.onnx")]),
            "onnx-inline": ("onnx.load + onnx.save, weights inside the .onnx, fresh process",
                            [sys.executable, "-c", "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])",
                             str(path), str(out_dir / "onnx.onnx")]),
        }

    for key in wanted:
        path, size, n_nodes = models["verify" if key == "verify" else "inline" if key.endswith("inline") else "main"]
        out_dir = path.parent / "out"
        label, cmd = jobs(path, out_dir)[key]
        peaks, secs = [], []
        for _ in range(args.runs):
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir()
            try:
                peak, s, _ = peak_rss(cmd)
            except RuntimeError as e:
                print(f"{label}: FAILED {e}")
                peaks = []
                break
            peaks.append(peak)
            secs.append(s)
            print(f"  {label} ({size / 1e9:.2f} GB model): peak {peak / 1e9:.2f} GB ({peak / size:.2f}x), "
                  f"{s:.1f} s", flush=True)
        if not key.startswith("onnx") and peaks:
            n = len(onnx.load(out_dir / "out.onnx", load_external_data=False).graph.node)
            label += f" ({n_nodes} -> {n} nodes)"
        shutil.rmtree(out_dir, ignore_errors=True)
        if peaks:
            peak = sorted(peaks)[len(peaks) // 2]
            rows.append((label, size, peak, peak / size, sorted(secs)[len(secs) // 2]))
        else:
            rows.append((label, size, None, None, None))
    cmdline = f"python benchmarks/bench_memory.py --size-gb {args.size_gb:g}"
    if args.verify_size_gb:
        cmdline += f" --verify-size-gb {args.verify_size_gb:g}"
    cmdline += f" --runs {args.runs}"
    lines = [
        "# Peak resident memory of `-p clean` on a large model (external data)",
        "",
        f"CPU: {cpu_name()} (2 cores, 24 GiB, shared with other jobs); models: generated MatMul chains "
        f"(64 MiB float32 weights in one external data file; the `inline` rows: the same model as the "
        f"verification row with its weights inside the .onnx file); `{cmdline}`",
        "",
        "| command | model on disk | peak RSS | ratio to model size | wall seconds |",
        "|---|---|---|---|---|",
    ]
    for label, size, peak, ratio, s in rows:
        if peak is None:
            lines.append(f"| {label} | {size / 1e9:.2f} GB | failed | - | - |")
        else:
            lines.append(f"| {label} | {size / 1e9:.2f} GB | {peak / 1e9:.2f} GB | {ratio:.2f}x | {s:.1f} |")
    lines += [
        "",
        "Peak RSS is the child's ru_maxrss (resource.getrusage(RUSAGE_CHILDREN) in a fresh parent), "
        "which counts the pages of memory-mapped weights that were read. Median of --runs "
        "measurements per row, rows one after the other. Wall seconds are noisy (shared machine).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (HERE / "results" / "memory.md").write_text(text)


if __name__ == "__main__":
    main()
