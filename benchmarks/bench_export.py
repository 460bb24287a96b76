"""Latency per runtime, FP32 and INT8, beside onnxruntime, on this CPU.

    python benchmarks/bench_export.py [--runs 200] [--out benchmarks/results/export.md]

For each model (the shipped digits CNN and tiny transformer, rapidocr's PP-OCR
classifier): graphopt export to OpenVINO, LiteRT and MNN, FP32 as given (shapes bound
only) and after the runtime's default passes, INT8 where the runtime takes it
(OpenVINO: graphopt's QDQ; LiteRT: onnx2tf full integer; MNN: refused). Every converted
model is verified against onnxruntime by the export itself. Then all of one model's
variants are timed interleaved (one run of each in turn, rotating), medians; onnxruntime
runs the ONNX model that was converted (all graph optimizations, spinning off), every
runtime with 2 threads. The ratio is the runtime's median over onnxruntime's on the
same ONNX model.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def models():
    out = [("digits_cnn", REPO / "models" / "digits_cnn.onnx", {}, REPO / "models" / "digits_calib.npz"),
           ("tiny_transformer", REPO / "models" / "tiny_transformer.onnx", {"input_ids": (1, 16)}, None)]
    try:
        import rapidocr_onnxruntime

        cls = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
        out.append(("ppocr_cls (rapidocr)", cls, {"x": (1, 3, 48, 192)}, "drawn"))
    except ImportError:
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runtimes", default="openvino,tflite,mnn")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "export.md"))
    args = ap.parse_args()

    from graphopt.errors import VerificationError
    from graphopt.export import ConversionError
    from graphopt.export.common import ort_timed_call, resolve_shapes, time_interleaved
    from graphopt.export.driver import make_runner, target
    from graphopt.export.driver import export_model
    from graphopt.samples import load_samples
    from graphopt.verify.inputs import InputSpace

    runtimes = args.runtimes.split(",")
    rows, failures = [], []
    t_start = time.time()
    for label, path, shapes_given, calib in models():
        model = onnx.load(str(path))
        shapes = resolve_shapes(model, shapes_given)
        feeds = InputSpace.from_model(model, shapes).draw(1, 0)[0].feeds
        if calib == "drawn":  # no real images shipped: INT8 calibrated on 32 drawn inputs in [0, 1)
            samples = [{k: v.copy() for k, v in ex.feeds.items()} for ex in
                       InputSpace.from_model(model, shapes, {n: (0.0, 1.0) for n in shapes}).draw(32, 1)]
        else:
            samples = load_samples(calib) if calib else None
        calls, meta = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for rt in runtimes:
                mod = target(rt)
                variants = [("fp32", "as given", "static-shapes"), ("fp32", "graphopt", mod.DEFAULT_SPEC)]
                if mod.INT8_SPEC is not None and samples is not None:
                    variants.append(("int8", "graphopt", mod.INT8_SPEC))
                elif mod.INT8_SPEC is None:
                    failures.append(f"{label} INT8 -> {rt}: refused (MNN's converter cannot take QDQ models)")
                for i, (prec, variant, spec) in enumerate(variants):
                    out = Path(tmp) / f"{rt}{i}{mod.SUFFIXES[0]}"
                    try:
                        res = export_model(path, rt, out, spec=spec, precision=prec, input_shapes=shapes,
                                           samples=samples if prec == "int8" else None)
                    except (ConversionError, VerificationError) as e:
                        failures.append(f"{label} {prec} {variant} -> {rt}: {e}")
                        continue
                    runner = make_runner(rt, res.output, model, shapes)
                    key = (rt, prec, variant)
                    # one onnxruntime timing per distinct ONNX model (runtimes given the
                    # same model share it)
                    digest = hashlib.sha1(res.model.SerializeToString()).hexdigest()[:12]
                    calls.setdefault(f"ort|{digest}", ort_timed_call(res.model, feeds))
                    calls["rt|" + "|".join(key)] = runner.timed_call(feeds)
                    meta[key] = (len(res.model.graph.node), res.verification.summary, spec, digest)
            timed = time_interleaved(calls, runs=args.runs, warmup=args.warmup)
        for key, (nodes, summary, spec, digest) in meta.items():
            rt, prec, variant = key
            ort_ms = timed[f"ort|{digest}"].median * 1e3
            rt_ms = timed["rt|" + "|".join(key)].median * 1e3
            rows.append((label, prec, rt, f"{variant} (`{spec}`)", nodes, ort_ms, rt_ms, summary))
        print(f"{label}: done", file=sys.stderr)

    lines = ["# Latency per runtime, FP32 and INT8, beside onnxruntime", "",
             f"CPU: {cpu_name()} (2 cores, shared with other jobs: the machine was busy, so read the ratios, "
             f"not the absolute times); {args.runs} interleaved runs per row after {args.warmup} warm-up runs, "
             f"medians; 2 threads everywhere, onnxruntime with all graph optimizations and spinning off, "
             f"on the ONNX model that was converted; `python benchmarks/bench_export.py --runs {args.runs}` "
             f"({time.time() - t_start:.0f} s)", "",
             "| model | precision | runtime | passes before conversion | nodes | onnxruntime ms | runtime ms "
             "| runtime / onnxruntime | verified against onnxruntime (FP32 model) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, prec, rt, variant, nodes, ort_ms, rt_ms, summary in rows:
        lines.append(f"| {label} | {prec} | {rt} | {variant} | {nodes} | {ort_ms:.3f} | {rt_ms:.3f} | "
                     f"{rt_ms / ort_ms:.2f}x | {summary} |")
    lines += ["", "onnxruntime ms: one timing per distinct ONNX model, shared by the rows that converted it. "
              "INT8 rows: onnxruntime runs the same INT8 ONNX model (QDQ) for OpenVINO; for LiteRT the "
              "INT8 model is onnx2tf's full-integer conversion of the FP32 ONNX model, so onnxruntime runs "
              "that FP32 model. The INT8 exports are verified under the lossy contract (rel_l2 <= 0.1 "
              "against the FP32 model) on the calibration samples: digits_calib.npz for the digits CNN; for "
              "PP-OCR cls, 32 inputs drawn uniformly in [0, 1) (no real text-line images ship here), so its "
              "INT8 accuracy is not a statement about real data. The tiny transformer has no INT8 row "
              "(no samples; its MatMuls suit dynamic quantization, which neither runtime takes from ONNX here). "
              "Per-call Python overhead (tens of microseconds) is a large part of the digits rows.", ""]
    if failures:
        lines += ["Not measured:", ""] + [f"- {f}" for f in failures] + [""]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
