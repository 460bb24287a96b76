"""`graphopt verify A.onnx B.onnx`: check that two models compute the same thing."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import GraphoptError
from . import options
from .present import progress_callback


def _budget_arg(text: str) -> tuple[str, float]:
    try:
        return options.parse_budget(text)
    except GraphoptError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_a", metavar="A.onnx", help="the reference model")
    parser.add_argument("model_b", metavar="B.onnx", help="the model to check against it")
    g = parser.add_argument_group("contract")
    g.add_argument("--contract", choices=("exact", "float", "lossy"), default="float",
                   help="exact: identical values; float (default): |a-b| <= atol + rtol*max|a|; "
                        "lossy: a budget on --metric")
    g.add_argument("--rtol", type=float, default=None, help="float contract: relative error always accepted (default 1e-6); "
                        "above it an output must stay within its input's float noise")
    g.add_argument("--atol", type=float, default=None, help="float contract: absolute tolerance (default 1e-8)")
    g.add_argument("--metric", choices=("rel_l2", "cosine", "top1"), default=None,
                   help="lossy contract: the metric (default rel_l2)")
    g.add_argument("--budget", action="append", default=[], type=_budget_arg, metavar="METRIC=VALUE",
                   help="lossy contract: bound on a metric, e.g. rel_l2=0.05, cosine=0.99, top1=0.9 "
                        "(repeatable; a bare number with --metric)")
    options.add_input_args(parser)
    v = parser.add_argument_group("verification")
    v.add_argument("--verify-examples", type=int, default=None, metavar="N",
                   help="inputs compared (default 8; --samples are used first)")
    v.add_argument("--repro-dir", default=None, metavar="DIR",
                   help="where the reproducer goes on failure (default: a new folder "
                        "./graphopt-repro/<date-time>-verify, never an earlier run's)")


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..samples import prepare_samples
    from ..verify import compare, save_repro
    from ..verify.compare import DEFAULT_EXAMPLES, unique_dir

    examples = DEFAULT_EXAMPLES if args.verify_examples is None else args.verify_examples
    if examples < 1:
        raise GraphoptError("--verify-examples must be at least 1")
    budget = dict(args.budget)
    if args.contract == "lossy":
        if args.metric and args.metric not in budget:
            budget[args.metric] = {"rel_l2": 0.05, "cosine": 0.99, "top1": 0.9}[args.metric]
    elif budget or args.metric:
        raise GraphoptError("--metric/--budget apply to --contract lossy")
    # --- export (issue 20): B converted for another runtime (.xml, .tflite, .mnn, .engine)
    from . import export as _export

    if _export.is_converted_path(args.model_b):
        return _export.run_verify(args, budget)
    # --- end export
    ctx = options.context_from_args(args)
    a = io.load(args.model_a)
    b = io.load(args.model_b)
    # validated against the reference model as `graphopt MODEL --samples` does: names,
    # dtypes and ranks checked, arrays that are no input (a `label`) dropped with a note
    samples = prepare_samples(ctx.samples, a)
    with progress_callback(quiet=args.quiet or args.json) as step:
        if step:
            step("comparing the models")
        result = compare(
            a, b, args.contract, budget=budget, rtol=args.rtol, atol=args.atol, examples=examples,
            seed=args.seed, input_shapes=ctx.input_shapes, input_ranges=ctx.input_ranges, samples=samples,
            threads=2, label="examples",
        )
    if not result.ok and not result.skipped:
        save_repro(args.repro_dir or unique_dir("graphopt-repro", "verify"), a, b, result,
                   title=f"graphopt verify {args.model_a} {args.model_b}")
    return present_result(args, result)


def present_result(args: argparse.Namespace, result, runtime: str | None = None) -> int:
    """Print a comparison (text or --json) and return the exit code: 0 equivalent,
    1 not equivalent, 2 not verified. `runtime` names the second model's runtime."""
    if args.json:
        d = result.as_dict()
        if runtime:
            d["runtime"] = runtime
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not args.quiet or not result.ok:
        for note in result.notes:
            print(f"note: {note}")
        where = f" in {runtime}" if runtime else ""
        if result.skipped:
            print(f"not verified: {result.reason}")
        elif result.ok:
            print(f"equivalent{where} ({result.contract.describe()}): {result.summary}")
        else:
            print(result.message(f"{runtime + ' model ' if runtime else ''}NOT equivalent"))
    if result.skipped:
        return 2
    return 0 if result.ok else 1
