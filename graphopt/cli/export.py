"""`graphopt export MODEL --to openvino|tflite|mnn|tensorrt -o OUT`: optimize for a
runtime, convert with its converter, verify the result in that runtime against
onnxruntime. Also the runtime branches of `graphopt verify` and `graphopt profile`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..errors import GraphoptError
from . import options

RUNTIMES = ("openvino", "tflite", "mnn", "tensorrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to export")
    parser.add_argument("--to", required=True, choices=RUNTIMES, dest="runtime",
                        help="the runtime: openvino (IR .xml/.bin), tflite (LiteRT via onnx2tf), mnn, "
                             "tensorrt (needs an NVIDIA GPU)")
    parser.add_argument("-o", "--output", default=None,
                        help="output file (.xml, .tflite, .mnn or .engine; default: beside the model)")
    parser.add_argument("-p", "--pipeline", default=None, metavar="SPEC",
                        help="graphopt passes run before conversion (default: suited to the runtime, "
                             "e.g. static-shapes,clean,fuse)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                        help="fp32 (default, float contract); int8: QDQ for OpenVINO/TensorRT, onnx2tf "
                             "full-integer for LiteRT, refused for MNN; fp16 (lossy contract)")
    options.add_input_args(parser)
    g = parser.add_argument_group("verification")
    g.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="lossy budget for int8/fp16 exports (default rel_l2=0.1 int8, 0.01 fp16)")
    g.add_argument("--verify-examples", type=int, default=8, metavar="N", help="inputs compared (default 8)")
    g.add_argument("--repro-dir", default=None, metavar="DIR",
                   help="where the reproducer goes on failure (default ./graphopt-repro/export-RUNTIME)")


def run(args: argparse.Namespace) -> int:
    from ..export import export_model
    from ..samples import load_samples

    if args.verify_examples < 1:
        raise GraphoptError("--verify-examples must be at least 1")
    if not Path(args.model).is_file():
        raise GraphoptError(f"no such model file: {args.model}")
    res = export_model(
        args.model, args.runtime, args.output, spec=args.pipeline, precision=args.precision,
        input_shapes=dict(options.parse_shape(s) for s in args.input_shape),
        input_ranges=dict(options.parse_range(r) for r in args.input_range),
        samples=load_samples(args.samples) if args.samples else None, seed=args.seed,
        examples=args.verify_examples, budget=dict(options.parse_budget(b) for b in args.budget) or None,
        repro_dir=args.repro_dir,
    )
    if args.json:
        json.dump(res.as_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not args.quiet:
        extra = "".join(f" + {f.name}" for f in res.files[1:])
        print(f"exported {args.model} -> {res.output}{extra} for {res.runtime} "
              f"({res.precision}; passes {res.spec})")
        v = res.verification
        print(f"verified in {res.runtime} against onnxruntime: {v.summary} under the {v.contract.describe()} contract")
        print(f"layout: {res.layout}")
        for note in res.notes + (v.notes if v is not None else []):
            print(f"note: {note}")
    return 0


# ------------------------------------------------------------------ graphopt verify A.onnx B.<converted>


def is_converted_path(path: str) -> bool:
    from ..export import runtime_for_path

    return runtime_for_path(path) is not None


def run_verify(args: argparse.Namespace, budget: dict) -> int:
    """`graphopt verify A.onnx B.xml|.tflite|.mnn|.engine` (called by cli/verify.py).
    The float contract's defaults are the export's (rtol 1e-4, atol 1e-5: another
    runtime's kernels, see graphopt.export.driver); --rtol/--atol override them."""
    from ..export import verify_converted
    from ..export.driver import EXPORT_ATOL, EXPORT_RTOL
    from ..samples import load_samples
    from ..verify.contracts import Contract

    if args.contract == "lossy":
        contract = Contract("lossy", budget=budget)
    elif args.contract == "float":
        contract = Contract("float", rtol=EXPORT_RTOL if args.rtol is None else args.rtol,
                            atol=EXPORT_ATOL if args.atol is None else args.atol)
    else:
        contract = Contract("exact")

    result, runtime = verify_converted(
        args.model_a, args.model_b, contract=contract,
        input_shapes=dict(options.parse_shape(s) for s in args.input_shape),
        input_ranges=dict(options.parse_range(r) for r in args.input_range),
        samples=load_samples(args.samples) if args.samples else None, seed=args.seed,
        examples=args.verify_examples or 8, repro_dir=args.repro_dir,
    )
    from .verify import present_result

    return present_result(args, result, runtime)


# ------------------------------------------------------------------ graphopt profile --runtime


def run_profile(args: argparse.Namespace) -> int:
    """`graphopt profile MODEL --runtime R`: latency in R beside onnxruntime, of the model as
    given and after graphopt's passes for R, timed interleaved (medians)."""
    from ..export.latency import profile_runtime

    shapes = dict(options.parse_shape(s) for s in args.input_shape)
    with tempfile.TemporaryDirectory(prefix="graphopt-profile-") as tmp:
        rows = profile_runtime(args.model, args.runtime, Path(tmp), input_shapes=shapes, runs=args.runs,
                               warmup=args.warmup, threads=args.threads or 2)
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    if args.quiet:
        return 0
    print(f"{os.path.basename(args.model)}: latency in {args.runtime} beside onnxruntime "
          f"({args.threads or 2} threads, onnxruntime spinning off, {args.runs} interleaved runs, medians)")
    print(f"{'model':<28} {'nodes':>6} {'onnxruntime':>12} {args.runtime:>12} {'ratio':>7}")
    for r in rows:
        print(f"{r['variant']:<28} {r['nodes']:>6} {r['ort_ms']:>9.3f} ms {r['runtime_ms']:>9.3f} ms "
              f"{r['runtime_ms'] / r['ort_ms']:>6.2f}x")
    print("ratio: the runtime's median over onnxruntime's (below 1: the runtime is faster). "
          "Each converted model was verified against onnxruntime first.")
    return 0
