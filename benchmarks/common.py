"""Small utilities shared by the benchmark scripts.

- cpu_name(): the CPU model from /proc/cpuinfo (for the header of every result table);
- ort_session(): an onnxruntime CPU session with 2 intra-op threads, no spinning;
- interleaved_median(): time several callables round-robin, report each one's median;
- markdown_table(): rows -> a markdown table, with a ratio column against a baseline.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_session(model, *, threads: int = 2, optimize: bool = True):
    """An onnxruntime CPU session: `threads` intra-op threads, allow_spinning=0."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def interleaved_median(
    jobs: Mapping[str, Callable[[], object]], runs: int = 5, warmup: int = 0, shuffle: bool = False
) -> dict[str, float | Exception]:
    """Run every job once per round, `runs` rounds (after `warmup` untimed rounds; with
    `shuffle` each round in a new seeded order), and return each job's median seconds. A job that raises is dropped from later
    rounds and reported as its exception."""
    import random

    times: dict[str, list[float]] = {name: [] for name in jobs}
    failed: dict[str, Exception] = {}
    order = list(jobs)
    rng = random.Random(0)
    for r in range(warmup + runs):
        if shuffle:
            rng.shuffle(order)  # no job always runs first or right after the same other one
        for name in order:
            job = jobs[name]
            if name in failed:
                continue
            t0 = time.perf_counter()
            try:
                job()
            except Exception as e:  # a peer failing is a result, not a crash
                failed[name] = e
                continue
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: failed.get(name) or statistics.median(times[name]) for name in jobs}


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], *,
    ratio_of: int | None = None, baseline: float | None = None, ratio_name: str = "ratio",
) -> str:
    """Rows as a markdown table. With `ratio_of` (a column index holding seconds) and
    `baseline`, a column `ratio_name` = row[ratio_of] / baseline is appended."""
    header = list(header)
    if ratio_of is not None:
        header.append(ratio_name)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt(c) for c in row]
        if ratio_of is not None:
            v = row[ratio_of]
            cells.append(f"{v / baseline:.2f}x" if isinstance(v, (int, float)) and baseline else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, Exception):
        return f"failed: {type(v).__name__}: {str(v).splitlines()[0][:80] if str(v) else ''}"
    return str(v)
