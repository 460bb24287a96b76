"""`graphopt batch MODEL... -p SPEC -o OUTDIR`: many models, one Ray task per model."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import options
from .present import console, format_bytes, progress_callback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="ONNX models to optimize")
    parser.add_argument("-p", "--pipeline", default="clean,fuse", metavar="SPEC",
                        help="pass pipeline for every model (default clean,fuse)")
    parser.add_argument("-o", "--outdir", required=True, metavar="OUTDIR",
                        help="folder for the optimized models and batch.json / batch.csv")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster (default: start Ray locally)")
    parser.add_argument("--no-verify", action="store_true", help="do not check passes numerically")
    options.add_context_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..distributed import run_batch

    ctx = options.context_from_args(args)
    ctx_fields = {"target": ctx.target, "allow_opset_upgrade": ctx.allow_opset_upgrade,
                  "input_shapes": ctx.input_shapes, "input_ranges": ctx.input_ranges,
                  "samples": ctx.samples, "seed": ctx.seed, "budget": ctx.budget}
    with progress_callback(quiet=args.quiet or args.json) as progress:
        result = run_batch(args.models, args.pipeline, args.outdir, ctx_fields=ctx_fields,
                           verify=not args.no_verify, ray_address=args.ray_address, progress=progress)
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not args.quiet:
        print_summary(result)
    return 1 if result.failed else 0


def print_summary(result) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col, justify in (("model", "left"), ("status", "left"), ("nodes", "right"),
                         ("size", "right"), ("node", "left"), ("reason", "left")):
        table.add_column(col, justify=justify)
    for m in result.models:
        status = {"ok": "[green]ok[/]", "skipped": "skipped", "failed": "[red]failed[/]"}[m["status"]]
        nodes = f"{m['nodes_before']} → {m['nodes_after']}" if "nodes_after" in m else ""
        size = format_bytes(m["size"]) if m.get("size") is not None else ""
        table.add_row(os.path.basename(m["input"]), status, nodes, size, str(m.get("host", "")), m.get("reason", "") or "")
    c = console()
    c.print(table)
    d = result.as_dict()
    c.print(f"[bold]{d['ok']} optimized, {d['skipped']} skipped (done before), {d['failed']} failed[/]  "
            f"results in {d['results']}")
