"""`graphopt search MODEL --samples DIR --space SPACE -o OUTDIR`: find the best pipelines."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import GraphoptError
from . import options
from .present import console, format_bytes, progress_callback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to optimize")
    parser.add_argument("--space", required=True, metavar="SPACE",
                        help="pipeline spec whose options may be lists of choices, e.g. "
                             "'clean,fuse,prune(ratio=[0.2,0.3]),quant(mode=[none,static])' "
                             "(enabled=[true,false] or a none choice skips a pass), or a .toml file")
    parser.add_argument("-o", "--outdir", required=True, metavar="OUTDIR",
                        help="folder for the study database, trial models, best models and report")
    parser.add_argument("--trials", type=int, default=20, help="trials in the study (default 20; "
                        "a rerun runs only those not finished)")
    parser.add_argument("--metric", metavar="MODULE:FUNCTION",
                        help="accuracy: a function taking a model path, returning a score (higher is "
                             "better); default: agreement with the input model on the samples")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL (default sqlite:///OUTDIR/search.db)")
    parser.add_argument("--study", metavar="NAME", help="study name (default: model name + digest)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster (default: start Ray locally)")
    parser.add_argument("--workers", type=int, default=None,
                        help="trials built at once (default: the cluster's CPUs)")
    parser.add_argument("--sampler", choices=("auto", "grid", "tpe", "nsga2", "random"), default="auto",
                        help="Optuna sampler (auto: the whole grid when it fits in --trials, else TPE)")
    parser.add_argument("--trial-timeout", type=float, default=1800.0, metavar="S",
                        help="a trial still building after S seconds fails (default 1800)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads when timing (default 1)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="interleaved timing rounds per trial (default 10, 10 runs per block)")
    parser.add_argument("--no-verify", action="store_true", help="do not check passes numerically")
    options.add_context_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..distributed import run_search

    if not args.samples:
        raise GraphoptError("graphopt search needs --samples (inputs to calibrate, score and time on)")
    if args.threads < 1 or args.rounds < 1:
        raise GraphoptError("--threads and --rounds must be at least 1")
    ctx = options.context_from_args(args)
    ctx_fields = {"target": ctx.target, "allow_opset_upgrade": ctx.allow_opset_upgrade,
                  "input_shapes": ctx.input_shapes, "input_ranges": ctx.input_ranges,
                  "seed": ctx.seed, "budget": ctx.budget}
    with progress_callback(quiet=args.quiet or args.json) as progress:
        result = run_search(args.model, ctx.samples, args.space, args.outdir, trials=args.trials,
                            metric=args.metric, storage=args.storage, study_name=args.study,
                            ray_address=args.ray_address, workers=args.workers, sampler=args.sampler,
                            seed=args.seed, ctx_fields=ctx_fields, verify=not args.no_verify,
                            trial_timeout=args.trial_timeout, threads=args.threads,
                            rounds=args.rounds, progress=progress)
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not args.quiet:
        print_summary(result)
    return 0 if any(t["state"] == "complete" for t in result.trials) else 1


def print_summary(result) -> None:
    from rich.table import Table

    c = console()
    table = Table(title="Pareto front (latency, size, accuracy)", box=None, header_style="bold")
    for col, justify in (("trial", "right"), ("speedup", "right"), ("size", "right"),
                         ("accuracy", "right"), ("measured on", "left"), ("spec", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    inp = result.input
    table.add_row("input", "1.00x", format_bytes(inp["size_bytes"]), f"{inp['accuracy']:.4f}", "", "")
    by_number = {t["number"]: t for t in result.trials}
    for n in result.pareto:
        t = by_number[n]
        table.add_row(str(n), f"{t['speedup']:.2f}x", format_bytes(t["size_bytes"]),
                      f"{t['accuracy']:.4f}", str(t.get("measured_on", "")), t["spec"] or "(input)")
    c.print(table)
    failed = [t for t in result.trials if t["state"] == "fail"]
    for t in failed:
        c.print(f"[red]trial {t['number']} failed[/]: {t['reason']}  ({t['spec']})")
    done = sum(1 for t in result.trials if t["state"] == "complete")
    c.print(f"[bold]{done} complete, {len(failed)} failed, {result.ran} run now[/]; best models: "
            + ", ".join(f"{k} → {v['path']}" for k, v in result.best.items()))
    c.print(f"report: {result.report}")
