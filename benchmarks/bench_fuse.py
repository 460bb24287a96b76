"""Benchmark of the `fuse` group against onnx-simplifier, onnxslim and onnxruntime's offline optimizer.

    python benchmarks/bench_fuse.py [--quick] [--runs 15] [--models resnet50,mobilenet_v2,bert,zoo]

Models: graphopt.testing.archs resnet50() / mobilenet_v2() (full size, 224x224, BN not
folded, random weights), bert() (BERT-base, batch 1, seq 128) and the onnx light zoo
(`--quick`: small variants and 3 zoo models). For each model, in one run:

- original;
- graphopt `-p clean,fuse --target onnx` and `--target ort`, and `-p clean,fuse,ort-nchwc
  --target ort` (onnxruntime's blocked layout ahead of time: hardware-specific, like
  onnxruntime's own ENABLE_ALL output) (verification off here; the tests run the same
  pipelines with the verifier on);
- onnx-simplifier (`onnxsim.simplify`), onnxslim (`onnxslim.slim`);
- onnxruntime's offline-optimized model (SessionOptions.optimized_model_filepath at
  ORT_ENABLE_EXTENDED; it contains com.microsoft contrib ops).

Each variant is timed in onnxruntime with graph optimizations DISABLED and ENABLED (ALL):
CPU EP, 2 intra-op threads, allow_spinning=0, batch 1, all sessions' runs interleaved,
median of --runs after warm-up. Node counts are those of the saved model. The markdown
table goes to benchmarks/results/fuse.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from common import cpu_name, interleaved_median, ort_session  # noqa: E402  (benchmarks/ is on sys.path as a script)

HERE = Path(__file__).resolve().parent
ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def session(model: onnx.ModelProto | str, optimize: bool) -> ort.InferenceSession:
    return ort_session(model, optimize=optimize)


def feeds_for(model: onnx.ModelProto, seq: int = 128) -> dict:
    init = {t.name for t in model.graph.initializer}
    out = {}
    rng = np.random.default_rng(0)
    for i in model.graph.input:
        if i.name in init:
            continue
        tt = i.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else (1 if "batch" in d.dim_param or not d.dim_param else seq)
                 for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "i":
            out[i.name] = (rng.integers(0, 100, shape) if "mask" not in i.name else np.ones(shape)).astype(dtype)
        else:
            out[i.name] = rng.standard_normal(shape).astype(dtype)
    return out


def ort_offline(model: onnx.ModelProto, tmp: str) -> onnx.ModelProto:
    path = os.path.join(tmp, "ort_offline.onnx")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = path
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(path)


def variants(model: onnx.ModelProto, tmp: str) -> dict[str, tuple[onnx.ModelProto | None, float, str]]:
    import graphopt
    out: dict[str, tuple] = {"original": (model, 0.0, "")}

    def attempt(name, fn):
        t = time.perf_counter()
        try:
            out[name] = (fn(), time.perf_counter() - t, "")
        except Exception as e:  # a peer tool failing on a model is a result, not a crash
            out[name] = (None, time.perf_counter() - t, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")

    attempt("graphopt onnx", lambda: graphopt.optimize(model, "clean,fuse", target="onnx", verify=False))
    attempt("graphopt ort", lambda: graphopt.optimize(model, "clean,fuse", target="ort", verify=False))
    attempt("graphopt ort+nchwc", lambda: graphopt.optimize(model, "clean,fuse,ort-nchwc", target="ort", verify=False))

    def sim():
        import onnxsim
        m, ok = onnxsim.simplify(model)
        return m
    attempt("onnxsim", sim)

    def slim():
        import onnxslim
        return onnxslim.slim(model)
    attempt("onnxslim", slim)
    attempt("ort offline (EXTENDED)", lambda: ort_offline(model, tmp))
    return out


def bench_model(name: str, model: onnx.ModelProto, runs: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        vs = variants(model, tmp)
    feeds = feeds_for(model)
    sessions = {}
    rows = []
    ref = None
    for vname, (m, secs, err) in vs.items():
        row = {"model": name, "variant": vname, "nodes": len(m.graph.node) if m is not None else None,
               "tool_s": secs, "error": err}
        rows.append(row)
        if m is None:
            continue
        for opt in (False, True):
            try:
                s = session(m, opt)
                res = s.run(None, feeds)
            except Exception as e:
                row["error"] = f"ORT: {str(e).splitlines()[0][:80]}"
                continue
            if ref is None:
                ref = res
            else:
                scale = max(float(np.max(np.abs(r))) for r in ref if r.size) + 1e-9
                row["max_err"] = max(float(np.max(np.abs(a.astype(np.float64) - b))) / scale
                                     for a, b in zip(ref, res) if a.size and a.dtype.kind == "f") if ref else 0.0
            sessions[(vname, opt)] = s
    jobs = {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}
    medians = interleaved_median(jobs, runs=runs, warmup=1, shuffle=True)
    for row in rows:
        for opt, key in ((False, "ms_off"), (True, "ms_on")):
            if (row["variant"], opt) in medians:
                row[key] = 1e3 * medians[(row["variant"], opt)]
    return rows


def fmt(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| model | variant | nodes | ORT opt OFF ms | vs orig | ORT opt ON ms | vs orig | tool s | max rel err | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["variant"]] = r
    for model, vs in by_model.items():
        o = vs["original"]
        for v, r in vs.items():
            def ms(key):
                return f"{r[key]:.2f}" if key in r else "-"

            def ratio(key):
                return f"{o[key] / r[key]:.2f}x" if key in r and key in o else "-"
            err = f"{r['max_err']:.1e}" if "max_err" in r else "-"
            lines.append(f"| {model} | {v} | {r['nodes'] if r['nodes'] is not None else '-'} | {ms('ms_off')} | "
                         f"{ratio('ms_off')} | {ms('ms_on')} | {ratio('ms_on')} | {r['tool_s']:.1f} | {err} | {r['error']} |")
    lines.append("")
    lines.append("`vs orig` = original latency / variant latency at the same ORT optimization level (>1 is faster). "
                 "The ORT-ENABLE_ALL latency of the original is the `original` row's ON column.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model variants, few zoo models")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,bert,zoo")
    ap.add_argument("--out", default=str(HERE / "results" / "fuse.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from graphopt.testing import archs
    runs = args.runs or (5 if args.quick else 15)
    wanted = args.models.split(",")
    models: list[tuple[str, onnx.ModelProto]] = []
    if "resnet50" in wanted:
        models.append(("resnet50" + (" (w0.5, 112px)" if args.quick else ""),
                       archs.resnet50(image=112, width=0.5) if args.quick else archs.resnet50()))
    if "mobilenet_v2" in wanted:
        models.append(("mobilenet_v2" + (" (112px)" if args.quick else ""),
                       archs.mobilenet_v2(image=112) if args.quick else archs.mobilenet_v2()))
    if "bert" in wanted:
        models.append(("bert-base seq128" if not args.quick else "bert 4L-256 seq128",
                       archs.bert(layers=4, hidden=256, heads=4, intermediate=1024) if args.quick else archs.bert()))
    if "zoo" in wanted:
        zoo = sorted(ZOO.glob("*.onnx"))
        if args.quick:
            zoo = [p for p in zoo if p.stem in ("light_squeezenet", "light_inception_v1", "light_bvlc_alexnet")]
        models += [(p.stem, onnx.load(p)) for p in zoo]
    rows = []
    t0 = time.time()
    for name, m in models:
        t = time.time()
        rows += bench_model(name, m, runs)
        print(f"{name}: {time.time() - t:.0f}s", file=sys.stderr)
    header = (f"# fuse benchmark\n\nCPU: {cpu_name()}; onnxruntime {ort.__version__}, onnx {onnx.__version__}; "
              f"2 intra-op threads, allow_spinning=0, batch 1, interleaved, median of {runs} runs. "
              f"Command: `python benchmarks/bench_fuse.py{' --quick' if args.quick else ''}` "
              f"(total {time.time() - t0:.0f}s).")
    text = fmt(rows, header)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
