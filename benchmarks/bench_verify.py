"""What verification costs: pipeline time with and without the verification instrument.

    /tmp/venv/bin/python benchmarks/bench_verify.py [--runs 5] [--pipeline clean,fuse] [--examples 8]

Model: full-size ResNet-50 (graphopt.testing.archs.resnet50(), batch 1, 224x224, random
weights), once as built and once with a few dead nodes added so the `clean` group has
work and at least one verification check runs (on the plain model, passes that change
nothing are not checked: the instrument only pays for its initial snapshot).
Runs are interleaved (with, without, with, ...) and medians reported, with the ratio
with/without.

Second table: one model-vs-model check, `graphopt.verify.compare` (what `graphopt verify
A B` runs) side by side with Polygraphy's Comparator (`pip install polygraphy`; two
OnnxrtRunners, graph optimizations off, 8 iterations of its default data loader,
CompareFunc.simple), on ResNet-50 vs the same model after `clean`. Verification uses onnxruntime, graph optimizations off, 2 intra-op
threads, allow_spinning=0, 8 drawn examples (default). Results go to
benchmarks/results/verify.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import onnx
from onnx import helper as h

HERE = Path(__file__).resolve().parent

import graphopt  # noqa: E402
from graphopt.testing import archs  # noqa: E402


from common import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def with_dead_nodes(model: onnx.ModelProto, n: int = 4) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    src = m.graph.node[len(m.graph.node) // 2].output[0]
    for i in range(n):
        m.graph.node.append(h.make_node("Relu", [src], [f"dead_{i}"], name=f"dead_{i}"))
        src = f"dead_{i}"
    return m


def time_pipeline(model: onnx.ModelProto, spec: str, verify: bool, examples: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    _, report = graphopt.optimize(model, spec, verify=verify, verify_options={"examples": examples},
                                  return_report=True)
    dt = time.perf_counter() - t0
    checks = [(r.name, r.extra.get("verify", {}).get("summary", "")) for r in report.records if r.changed]
    return dt, checks


def compare_peers(model: onnx.ModelProto, runs: int, examples: int) -> list:
    from graphopt.verify import compare

    after = graphopt.optimize(model, "clean", verify=False)
    tools = {"graphopt compare": lambda: compare(model, after, "float", examples=examples, threads=2).ok}
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
            return bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(rtol=1e-4, atol=1e-6)))

        tools["polygraphy Comparator"] = poly
    except ImportError:
        print("polygraphy not installed: graphopt row only")
    times = {k: [] for k in tools}
    for _ in range(runs):
        for k, fn in tools.items():
            t0 = time.perf_counter()
            ok = fn()
            times[k].append(time.perf_counter() - t0)
            assert ok, f"{k} reported a difference"
    return [(k, statistics.median(v)) for k, v in times.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pipeline", default="clean,fuse")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--image", type=int, default=224)
    args = ap.parse_args()

    base = archs.resnet50(image=args.image)
    models = {"resnet50": base, "resnet50+dead": with_dead_nodes(base)}
    changed_passes = {}
    rows = []
    for label, model in models.items():
        times = {True: [], False: []}
        for _ in range(args.runs):
            for verify in (True, False):
                dt, checks = time_pipeline(model, args.pipeline, verify, args.examples)
                times[verify].append(dt)
                if verify:
                    changed_passes[label] = checks
        on, off = statistics.median(times[True]), statistics.median(times[False])
        rows.append((label, off, on, on / off))
    peer_rows = compare_peers(models["resnet50+dead"], args.runs, args.examples)
    groups = graphopt.pipeline.groups()
    fuse_members = ", ".join(groups["fuse"].members) if "fuse" in groups else "(no fuse group)"
    lines = [
        "# Verification cost",
        "",
        f"CPU: {cpu_name()} ({len(__import__('os').sched_getaffinity(0))} cores); "
        f"pipeline `{args.pipeline}` (fuse = [{fuse_members or 'empty'}]); "
        f"{args.examples} examples per check; median of {args.runs} interleaved runs.",
        "",
        "| model | without verify (s) | with verify (s) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, off, on, ratio in rows:
        lines.append(f"| {label} | {off:.2f} | {on:.2f} | {ratio:.2f}x |")
    lines.append("")
    if peer_rows:
        lines += ["| one A-vs-B check, ResNet-50 | median (s) | ratio to graphopt |", "| --- | ---: | ---: |"]
        base_t = peer_rows[0][1]
        for label, t in peer_rows:
            lines.append(f"| {label} | {t:.2f} | {t / base_t:.2f}x |")
        lines.append("")
    for label, checks in changed_passes.items():
        lines.append(f"- {label}: passes that changed the model and were checked: "
                     + (", ".join(f"{n} ({s})" for n, s in checks) or "none"))
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / "verify.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
