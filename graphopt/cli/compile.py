"""`graphopt compile MODEL --arch ARCH -o OUT`: compile a model with TVM for an edge device.

`--arch` names the hardware (a CPU preset; TVM calls it the target). It was `--target`,
which `graphopt MODEL` uses for the runtime the rewritten model is emitted for; `--target`
and `--list-targets` still work here, hidden, so older commands do not break."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import GraphoptError
from . import options
from .present import console, progress_callback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="the ONNX model to compile")
    parser.add_argument("--arch", default="host", metavar="ARCH",
                        help="the hardware to compile for: host or a CPU preset (default host; "
                             "--list-archs shows all)")
    parser.add_argument("--target", dest="arch", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="the library to write (default: MODEL with .ARCH.so)")
    parser.add_argument("-p", "--pipeline", default=None, metavar="SPEC",
                        help="graphopt passes run before TVM (default static-shapes,clean,fuse; "
                             "'' for none)")
    parser.add_argument("--tune-trials", type=int, default=0, metavar="N",
                        help="tune with TVM's MetaSchedule, N measured trials in all (default 0: "
                             "TVM's default schedules)")
    parser.add_argument("--tune-cache", metavar="DIR", default=None,
                        help="tuning database folder, reused by later builds "
                             "(default $TMPDIR/graphopt-tune)")
    parser.add_argument("--tune-share", type=float, default=0.9, metavar="F",
                        help="tune the heaviest tasks holding this share of the FLOPs; the rest "
                             "keep default schedules (default 0.9; 1 tunes every task)")
    parser.add_argument("--archive", action="store_true",
                        help="write a tar of object files even when a cross toolchain is installed")
    parser.add_argument("--list-archs", action="store_true", help="list the named archs and exit")
    parser.add_argument("--list-targets", dest="list_archs", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    d = parser.add_argument_group("device (TVM RPC)")
    d.add_argument("--rpc", metavar="HOST:PORT",
                   help="a TVM RPC server on the device (python -m tvm.exec.rpc_server): upload the "
                        "library, verify and time it there; --tune-trials measures there too")
    d.add_argument("--rpc-tracker", metavar="HOST:PORT", help="a TVM RPC tracker to get the device from")
    d.add_argument("--rpc-key", metavar="KEY", help="the key the device registered under at the tracker")
    d.add_argument("--rpc-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on a device call after this long (default 120)")
    g = parser.add_argument_group("verification")
    g.add_argument("--no-verify", action="store_true",
                   help="check neither the passes nor the compiled module numerically")
    g.add_argument("--verify-examples", type=int, default=8, metavar="N",
                   help="inputs drawn to check the compiled module (default 8)")
    options.add_input_args(parser)  # --input-shape (leading symbolic dims default to 1), ranges, samples


def default_output(model: str, arch: str) -> str:
    import os

    root, _ = os.path.splitext(model)
    return f"{root}.{arch}.so"


def run(args: argparse.Namespace) -> int:
    from .. import codegen

    if args.list_archs:
        return print_archs(codegen.describe_targets(), as_json=args.json)
    if not args.model:
        raise GraphoptError("give the ONNX model to compile (graphopt compile MODEL --arch ARCH)")
    if args.verify_examples < 1:
        raise GraphoptError("--verify-examples must be at least 1")
    from ..device import Remote

    remote = Remote.parse(rpc=args.rpc, tracker=args.rpc_tracker, key=args.rpc_key,
                          timeout=args.rpc_timeout)

    shapes = dict(options.parse_shape(s) for s in args.input_shape)
    ranges = dict(options.parse_range(r) for r in args.input_range)
    samples = args.samples or None   # loaded and checked against the model by compile_model
    output = args.output or default_output(args.model, args.arch)
    with progress_callback(quiet=args.quiet or args.json) as progress, _leave_if_abandoned():
        result = codegen.compile_model(
            args.model, args.arch, output, spec=args.pipeline, input_shapes=shapes,
            input_ranges=ranges, samples=samples,
            tune_trials=args.tune_trials, tune_cache=args.tune_cache, tune_share=args.tune_share,
            verify=not args.no_verify,
            examples=args.verify_examples, seed=args.seed, archive=args.archive, remote=remote,
            progress=progress,
        )
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif not args.quiet:
        print_result(result)
    return 0


def _where(d: dict) -> str:
    if "tracker" in d:
        return f"key {d.get('key')} via tracker {d['tracker']}"
    return f"RPC server {d.get('rpc')}"


class _leave_if_abandoned:
    """A device call that timed out leaves a thread blocked in TVM; if it came back during
    interpreter shutdown the process would abort. Print the one-line error and leave now."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from ..device import abandoned_calls

        if exc is not None and isinstance(exc, GraphoptError) and abandoned_calls():
            import os

            sys.stdout.flush()
            sys.stderr.write(f"graphopt: error: {exc}\n")
            sys.stderr.flush()
            os._exit(2)
        return False


def print_archs(archs, as_json: bool = False) -> int:
    if as_json:
        json.dump([{"name": n, "description": d, "tvm": t} for n, d, t in archs], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("arch", "description", "TVM target"):
        table.add_column(col)
    for row in archs:
        table.add_row(*row)
    c = console()
    if not c.is_terminal:
        c.width = max(c.width, 160)
    c.print(table)
    return 0


def print_result(r) -> None:
    from rich.markup import escape

    c = console()
    shapes = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r.input_shapes.items())
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())
    c.print(f"passes: {r.nodes_before} → {r.nodes_after} nodes; inputs {shapes}")
    if r.tuning is not None:
        t = r.tuning
        c.print(f"tuning: MetaSchedule, {t.trials} trials; {t.tasks_selected} of {t.tasks} tasks hold "
                f"{100 * t.flops_share:.0f}% of the FLOPs: {t.tasks_tuned} tuned now, "
                f"{t.tasks_selected - t.tasks_tuned} from the cache {escape(t.cache)}; {t.seconds:.0f} s; "
                f"measured on {escape(t.measured_on)}")
    c.print(f"verified: {escape(r.verification)}")
    if r.device is not None:
        lat = r.device.get("latency", {})
        c.print(f"device: {escape(_where(r.device))}: upload and load {r.device['upload_load_s']:.2f} s; "
                f"latency {lat.get('median_ms', float('nan')):.3f} ms median, {lat.get('min_ms', float('nan')):.3f} ms min "
                f"(TVM time evaluator on the device, {lat.get('repeat')}x{lat.get('number')} runs)")
    for note in r.notes:
        c.print(f"[yellow]note:[/] {escape(note)}")
    if r.link_hint:
        c.print(escape(r.link_hint))
    c.print(f"[bold]wrote {escape(r.output)}[/] ({r.kind} for {r.target}; {secs})")
