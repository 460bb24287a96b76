"""`graphopt profile MODEL`: parameters, size, FLOPs/MACs, memory and latency."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ..errors import GraphoptError
from . import options
from .present import console, format_bytes, progress_callback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to profile")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                        help="bind an input's shape (repeatable)")
    parser.add_argument("--batch", metavar="N[,N...]",
                        help="batch sizes to bind the inputs' leading symbolic dim to, e.g. 1,8,32 "
                             "(FLOPs, memory and latency are shown for each)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: min(4, CPUs))")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per batch size (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs (default 3)")
    parser.add_argument("--no-latency", action="store_true", help="do not run the model for timings")
    parser.add_argument("--no-memory", action="store_true",
                        help="do not measure the session's resident memory in a subprocess")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="show the N most expensive nodes (default 10; 0 hides them)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when a node's shape is unknown instead of counting it 0")
    # --- export (issue 20)
    parser.add_argument("--runtime", choices=("openvino", "tflite", "mnn", "tensorrt"), default=None,
                        help="latency in this runtime beside onnxruntime, as given and after graphopt's passes "
                             "for it (each converted and verified; interleaved medians)")
    # --- end export


def parse_batches(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    out = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise GraphoptError(f"bad --batch '{text}' (expected positive integers like 1,8,32)")
        out.append(int(part))
    return out or [None]


def _default_batch(model, shapes: dict) -> tuple[list[int | None], str | None]:
    """Without --batch, a leading symbolic (batch-like) dim is bound to 1, the rule
    `graphopt compile` uses (analysis.shapes.resolve_input_shapes with batch=1); other
    unknown dims still need --input-shape. ([batch], note) -- ([None], None) when nothing
    is left to bind."""
    from ..analysis.shapes import resolve_input_shapes

    as_given, _ = resolve_input_shapes(model, shapes)
    at_one, _ = resolve_input_shapes(model, shapes, batch=1)
    bound = [name for name, shape in as_given.items()
             if shape and not isinstance(shape[0], int) and isinstance((at_one[name] or (None,))[0], int)]
    if not bound:
        return [None], None
    dims = sorted({str(as_given[n][0]) for n in bound})
    return [1], (f"leading symbolic dim {', '.join(dims)} of input(s) {', '.join(bound)} bound to 1, "
                 "as graphopt compile does (--batch N for other batch sizes)")


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..analysis import profile_model

    if args.runs < 1 or args.warmup < 0:
        raise GraphoptError("--runs must be at least 1 and --warmup at least 0")
    if args.threads is not None and args.threads < 1:
        raise GraphoptError("--threads must be at least 1")
    # --- export (issue 20)
    if args.runtime:
        from .export import run_profile

        return run_profile(args)
    # --- end export
    shapes = dict(options.parse_shape(s) for s in args.input_shape)
    batches = parse_batches(args.batch)
    model = io.load(args.model)
    default_note = None
    if batches == [None]:
        batches, default_note = _default_batch(model, shapes)
    with progress_callback(quiet=args.quiet or args.json) as progress:
        prof = profile_model(
            model, name=os.path.basename(args.model), path=args.model, input_shapes=shapes,
            batches=batches, latency=not args.no_latency, measure_memory=not args.no_memory,
            threads=args.threads, warmup=args.warmup, runs=args.runs, strict=args.strict,
            progress=progress,
        )
    if default_note:
        prof.notes.insert(0, default_note)
    if args.json:
        json.dump(prof.as_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not args.quiet:
        print_profile(prof, top=args.top)
    return 0


def format_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 10 else f"{seconds:.1f} s"


def print_profile(prof, top: int = 10) -> None:
    from rich.table import Table

    c = console()
    if not c.is_terminal:  # pipes and files: do not squeeze the tables into 80 columns
        c.width = max(c.width, 120)
    size = format_bytes(prof.file_bytes if prof.file_bytes is not None else prof.serialized_bytes)
    c.print(f"[bold]{prof.name}[/]: {prof.nodes} nodes, opset {prof.opset}, "
            f"{format_count(prof.params.total)} parameters "
            f"({format_bytes(prof.params.bytes)} of weights), file {size}")

    t = Table(box=None, header_style="bold", title=None)
    for b in prof.batches:
        label = f"batch {b.batch}" if b.batch is not None else "inputs"
        c.print(f"{label}: " + "; ".join(
            f"{k} {'x'.join(map(str, v))}" for k, v in b.input_shapes.items()))
    cols = ["batch", "MACs", "FLOPs", "act. mem (est.)"]
    if any(b.latency for b in prof.batches):
        cols += ["p50", "p90", "p99", "throughput"]
    for col in cols:
        t.add_column(col, justify="left" if col == "batch" else "right", no_wrap=True)
    for b in prof.batches:
        row = [
            str(b.batch) if b.batch is not None else "-",
            format_count(b.macs.total), format_count(b.macs.flops),
            format_bytes(b.activations.peak_bytes),
        ]
        if b.latency:
            lat = b.latency
            row += [_ms(lat.p50), _ms(lat.p90), _ms(lat.p99), f"{lat.throughput:.1f} /s"]
        t.add_row(*row)
    c.print(t)
    if prof.threads and any(b.latency for b in prof.batches):
        lat = prof.first.latency
        c.print(f"onnxruntime CPU, {prof.threads} intra-op thread(s), "
                f"{lat.warmup} warm-up + {lat.runs} timed runs per batch size")
    mm = prof.measured_memory
    if mm:
        c.print(f"measured peak resident memory of the session (fresh process, "
                f"batch {prof.first.batch if prof.first.batch is not None else 'as given'}): "
                f"{format_bytes(mm.session_peak_bytes)} above a {format_bytes(mm.baseline_bytes)} "
                f"interpreter baseline (estimated activations "
                f"{format_bytes(prof.first.activations.peak_bytes)} + weights "
                f"{format_bytes(prof.params.bytes)})")

    counts = prof.first.macs
    ops = Table(box=None, header_style="bold", title=None)
    for col in ("op type", "nodes", "MACs", "FLOPs", "% FLOPs"):
        ops.add_column(col, justify="left" if col == "op type" else "right")
    n_by_op: dict[str, int] = {}
    for n in counts.nodes:
        key = n.op_type if not n.domain else f"{n.domain}.{n.op_type}"
        n_by_op[key] = n_by_op.get(key, 0) + 1
    for op, flops in counts.flops_per_op_type.items():
        if flops == 0 and counts.per_op_type.get(op, 0) == 0:
            continue
        share = 100.0 * flops / counts.flops if counts.flops else 0.0
        ops.add_row(op, str(n_by_op.get(op, 0)), format_count(counts.per_op_type.get(op, 0)),
                    format_count(flops), f"{share:.1f}")
    c.print(ops)
    if top > 0:
        nodes = sorted(counts.nodes, key=lambda n: (-n.flops, n.name))[:top]
        nt = Table(box=None, header_style="bold", title=None)
        for col in ("node", "op", "output", "MACs", "FLOPs"):
            nt.add_column(col, justify="right" if col in ("MACs", "FLOPs") else "left")
        for n in nodes:
            shape = "x".join(map(str, n.output_shape)) if n.output_shape else "?"
            nt.add_row(n.name, n.op_type, shape, format_count(n.macs), format_count(n.flops))
        c.print(nt)
    for note in prof.notes:
        c.print(f"[yellow]note:[/] {note}")
