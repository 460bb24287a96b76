"""INT8 speed-up as a deployment sees it: each model alone in its own process.

    python benchmarks/bench_quant_deploy.py [--models ocr_orient,mobilenet_v3_small]
        [--threads 1,2] [--spinning 0,1] [--rounds 7] [--runs 300]

bench_quant times every variant in a pair with FP32, by quant's Timer (with spinning
threads: two sessions in a child process, sharing one pool). A deployment runs one model
per process, usually with onnxruntime's default, spinning on. This script checks what
the paired ratios mean there: for each model (bench_quant's models and samples) and
intra-op thread count it builds FP32, graphopt `quant` (told the thread count) and onnxruntime's
quant_pre_process + quantize_static, then times each in a fresh process (one session,
50 warm-up runs, then `--runs` runs timed one by one; the process reports their median).
A round starts one process per variant, in an order that rotates from round to round;
the speed-up is the median over rounds of t_fp32 / t_variant within the round, shown with
the smallest and largest round.

The table goes to benchmarks/results/quant_deploy.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent


def child(path: str, threads: int, spinning: int, feed_path: str, runs: int) -> None:
    """Runs in its own process: print the median latency (ms) of `runs` runs."""
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", str(spinning))
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = dict(np.load(feed_path))
    for _ in range(50):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    print(f"{np.median(times) * 1e3:.6f}")


def time_alone(path: Path, threads: int, spinning: int, feed_path: Path, runs: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(threads), str(spinning),
                          str(feed_path), str(runs)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        a = sys.argv[2:]
        child(a[0], int(a[1]), int(a[2]), a[3], int(a[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ocr_orient,mobilenet_v3_small", help="bench_quant model keys")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--spinning", default="0,1", help="onnxruntime allow_spinning values to time with")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=300, help="timed runs per process")
    ap.add_argument("--out", default=str(HERE / "results" / "quant_deploy.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ["GRAPHOPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-quant-deploy-cache-")
    sys.path.insert(0, str(HERE))
    import bench_quant as bq  # the same models, samples, budgets and peer settings
    from common import cpu_name, markdown_table

    thread_counts = [int(t) for t in args.threads.split(",") if t]
    spin_values = [int(s) for s in args.spinning.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="bench-quant-deploy-"))
    rows = []
    load_start = os.getloadavg()
    for name, fp32, calib, held in bq.build_models(False, set(args.models.split(","))):
        feed_path = work / "feed.npz"
        np.savez(feed_path, **held[0])
        bud = bq.BUDGETS.get(name)
        for threads in thread_counts:
            print(f"== {name}, {threads} thread(s)", flush=True)
            variants = {"fp32": fp32}
            variants["graphopt quant"], _, stats = bq.ours("quant", fp32, calib, bud, threads=threads)
            variants["ort pre_process+quantize"] = bq.ort_quant(fp32, calib, preprocess=True)[0]
            paths = {}
            for i, (k, proto) in enumerate(variants.items()):
                paths[k] = work / f"v{i}.onnx"
                onnx.save(proto, str(paths[k]))
            regs = stats.get("regions") or {}
            chosen = ("kept float" if stats.get("reverted") else
                      f"{sum(v.startswith('int8') for v in regs.values())}/{len(regs)} regions int8")
            for spin in spin_values:
                ms: dict[str, list[float]] = {k: [] for k in variants}
                order = list(variants)
                for r in range(args.rounds):
                    for k in order[r % len(order):] + order[:r % len(order)]:
                        ms[k].append(time_alone(paths[k], threads, spin, feed_path, args.runs))
                for k in variants:
                    ratios = np.array(ms["fp32"]) / np.array(ms[k])
                    rows.append((name, str(threads), "on" if spin else "off", k, f"{np.median(ratios):.2f}x",
                                 f"{ratios.min():.2f}-{ratios.max():.2f}", f"{np.median(ms[k]):.3f}",
                                 chosen if k == "graphopt quant" else ""))
                    print("   ", rows[-1], flush=True)
    lines = [
        "# INT8 speed-up with each model alone in its own process",
        "",
        f"CPU: {cpu_name()} ({bq.cpu_flags()}), {os.cpu_count()} cores; onnxruntime {bq.ort.__version__}. "
        f"Each variant in a fresh process: one session, all graph optimizations, 50 warm-up runs, median of "
        f"{args.runs} runs; {args.rounds} rounds, the process order rotating. Speed-up: median over rounds of "
        f"t_fp32 / t_variant in the same round (range: smallest and largest round). graphopt quant was told the "
        f"thread count and times its candidates with spinning threads (its default, passes/_timing.Timer).",
        "",
        f"Machine load (1-min load average) at start {load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f}.",
        "",
        "Reproduce: `python benchmarks/bench_quant_deploy.py"
        + (f" --models {args.models}" if args.models != "ocr_orient,mobilenet_v3_small" else "")
        + (f" --threads {args.threads}" if args.threads != "1,2" else "")
        + (f" --spinning {args.spinning}" if args.spinning != "0,1" else "") + "`.",
        "",
        markdown_table(["model", "threads", "spinning", "variant", "speedup", "range", "latency ms", "regions"], rows),
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
