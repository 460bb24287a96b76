"""`graphopt MODEL -p SPEC [-o OUT]`: optimize a model with a pass pipeline."""

from __future__ import annotations

import argparse
import json
import sys

from .. import api
from ..errors import GraphoptError
from ..instruments import DumpAfter
from ..pipeline import Report
from . import options
from .present import console, format_bytes, progress_callback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to optimize")
    parser.add_argument("-p", "--pipeline", default="clean,fuse", metavar="SPEC",
                        help="passes and groups, e.g. 'clean,fuse,prune(ratio=0.3)' "
                             "(default clean,fuse; see `graphopt passes`)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="output path (default: MODEL with .opt.onnx)")
    parser.add_argument("--in-place", action="store_true", help="overwrite the input model")
    parser.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                        help="weights in a separate .data file (auto: only when over 2 GB)")
    parser.add_argument("--dump-after", action="append", default=[], metavar="PASS",
                        help="save the model after each run of PASS ('*' for all; repeatable)")
    parser.add_argument("--dump-dir", default="graphopt-dump", metavar="DIR",
                        help="where --dump-after writes (default ./graphopt-dump)")
    parser.add_argument("--report", metavar="PATH",
                        help="write a before/after report: one self-contained HTML page, or JSON "
                             "when PATH ends in .json (profiles the input and output models)")
    options.add_context_args(parser)
    options.add_verify_args(parser)


def _check_side_outputs(args: argparse.Namespace) -> None:
    """Folders written during or after the work must be writable before it starts."""
    import os

    from .. import io

    if args.dump_after:
        io.check_writable_folder(args.dump_dir, "--dump-dir")
    if getattr(args, "report", None):
        if os.path.isdir(args.report):
            raise GraphoptError(f"--report '{args.report}' is a folder, expected a file name")
        folder = os.path.dirname(args.report) or "."
        if not os.path.exists(folder):
            raise GraphoptError(f"--report '{args.report}': folder '{folder}' does not exist")
        io.check_writable_folder(folder, "--report folder")
    if not args.no_verify and args.repro_dir:
        io.check_writable_folder(args.repro_dir, "--repro-dir")


def run(args: argparse.Namespace) -> int:
    _check_side_outputs(args)
    ctx = options.context_from_args(args)
    verify_options = None if args.no_verify else options.verify_options_from_args(args)
    instruments = []
    if args.dump_after:
        instruments.append(DumpAfter(args.dump_after, args.dump_dir))
    external = {"auto": None, "always": True, "never": False}[args.external_data]
    stage_profiler = None
    if getattr(args, "report", None):
        from ..instruments.stages import StageProfiler

        stage_profiler = StageProfiler(ctx.input_shapes)
        instruments.append(stage_profiler)  # after verification: sees reverted passes
    # --- report/json (issue 17): weights in Constant nodes count; hints on unfused patterns
    from ..instruments.counts import FusionHints, WeightCount

    instruments += [WeightCount(), FusionHints()]  # last: a reverted pass counts as reverted
    # --- end report/json
    with progress_callback(quiet=args.quiet or args.json) as progress:
        if stage_profiler is not None:
            stage_profiler.progress = progress
        out, report = api.optimize_file(
            args.model, args.output, args.pipeline, ctx=ctx, instruments=instruments,
            verify=not args.no_verify, verify_options=verify_options,
            in_place=args.in_place, external_data=external, progress=progress,
        )
        if stage_profiler is not None:
            from ..report import report_for_run

            report_for_run(args.report, report, input_path=args.model, output_path=out,
                           spec=args.pipeline, input_shapes=ctx.input_shapes, progress=progress)
    if args.json:
        from ..schema import run_document  # --- report/json (issue 17): graphopt.run/1

        json.dump(run_document(report, spec=args.pipeline, input_path=args.model, output_path=out),
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        print_report(report, out)
    return 0


def print_report(report: Report, out: str) -> None:
    from rich.table import Table

    table = Table(title=None, box=None, header_style="bold")
    for col, justify in (("pass", "left"), ("changed", "center"), ("nodes", "right"),
                         ("weights", "right"), ("time", "right"), ("check", "left")):
        table.add_column(col, justify=justify)
    for r in report.records:
        if not r.changed and r.iteration > 0:
            continue
        check = r.extra.get("verify", {}).get("summary", "")
        if r.reverted:
            check = f"[red]reverted[/] {check}"
        table.add_row(
            r.spec + (f" #{r.iteration + 1}" if r.iteration else ""),
            "yes" if r.changed else "-",
            f"{r.nodes_before} → {r.nodes_after}" if r.changed else str(r.nodes_after),
            format_bytes(r.bytes_after),
            f"{r.seconds * 1000:.0f} ms",
            check,
        )
    c = console()
    c.print(table)
    # --- fusion refusals (issue 14, helper A): a rule's last run, e.g.
    # "fuse-attention: 0 fused, 2 candidates refused: mask shape not provably [batch, seq] (2)"
    last = {r.spec: r.stats for r in report.records}
    for spec, st in ((k, v) for k, v in last.items() if v.get("reasons")):
        stat, n = next(iter(st.items()))
        why = "; ".join(f"{k} ({v})" for k, v in st["reasons"].items())
        c.print(f"{spec}: {n} {stat}, {st['refused']} candidates refused: {why}", markup=False, highlight=False)
    # --- end fusion refusals
    # quant's INT8 decisions (issue 16), its last run: "quant: 34/36 regions int8 (set '...',
    # measured 1.21x [1.19, 1.22]); 2 float: R0 (Conv): why" or "quant: kept float: why"
    from ..report.quant import summary_line

    quant = {r.spec: r.stats for r in report.records if r.name == "quant" or "regions" in r.stats}
    for spec, st in quant.items():
        line = summary_line(st)
        if line:
            c.print(f"{spec}: {line}", markup=False, highlight=False)
    c.print(
        f"[bold]{report.nodes_before} → {report.nodes_after} nodes, "
        f"{format_bytes(report.bytes_before)} → {format_bytes(report.bytes_after)} weights, "
        f"{report.seconds:.2f} s[/]  wrote {out}"
    )
