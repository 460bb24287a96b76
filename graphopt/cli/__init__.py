"""The `graphopt` command: argument parsing and presentation only.

    graphopt MODEL -p SPEC [-o OUT]      optimize a model (the default command)
    graphopt passes                      list passes and groups
    graphopt verify A.onnx B.onnx        compare two models numerically
    graphopt profile MODEL               FLOPs, memory, latency

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args)`.
Errors a user can cause print one line and exit 2 (1 for a verification failure);
--debug shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from ..errors import GraphoptError

# name -> (module, one-line help). The default command is "run".
COMMANDS = {
    "run": ("run", "optimize a model with a pass pipeline (default)"),
    "passes": ("passes", "list every pass and group with its options"),
    "verify": ("verify", "check that two models compute the same thing"),
    "profile": ("profile", "FLOPs, parameters, memory and latency of a model"),
    "compile": ("compile", "compile a model with TVM for an edge target"),
    # --- distributed (issue 19)
    "batch": ("batch", "optimize many models in parallel on Ray (resumable)"),
    "search": ("search", "search pipeline configurations with Optuna on Ray (resumable)"),
    # --- end distributed
    # --- export (issue 20)
    "export": ("export", "convert a model for OpenVINO, LiteRT, MNN or TensorRT, verified against onnxruntime"),
    # --- end export
}


def add_common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output and logging")
    g.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    g.add_argument("--json", action="store_true", help="print a machine-readable summary to stdout")
    # --- report/json/version (issue 17)
    g.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import a Python module (name or path of a .py file) that registers "
                        "passes (repeatable)")
    g.add_argument("--version", action="version", version=f"graphopt {_version()}",
                   help="print graphopt's version and exit")
    # --- end report/json/version


# --- report/json/version (issue 17)
def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("graphopt")
    except PackageNotFoundError:
        from .. import __version__

        return __version__
# --- end report/json/version


def _available_commands() -> dict[str, tuple[str, str]]:
    """The commands whose module is present (later features add theirs)."""
    return {
        name: entry for name, entry in COMMANDS.items()
        if importlib.util.find_spec(f"graphopt.cli.{entry[0]}") is not None
    }


def build_parser(command: str) -> argparse.ArgumentParser:
    commands = _available_commands()
    module = importlib.import_module(f"graphopt.cli.{commands[command][0]}")
    prog = "graphopt" if command == "run" else f"graphopt {command}"
    epilog = None
    if command == "run":
        epilog = "other commands: " + "; ".join(
            f"graphopt {n}: {h}" for n, (_, h) in commands.items() if n != "run"
        )
    parser = argparse.ArgumentParser(prog=prog, description=commands[command][1], epilog=epilog)
    module.add_arguments(parser)
    add_common(parser)
    parser.set_defaults(_module=module)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING
    if args.quiet:
        level = logging.ERROR
    elif args.verbose == 1:
        level = logging.INFO
    elif args.verbose >= 2 or args.debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("graphopt: %(levelname)s: %(message)s"))
    root = logging.getLogger("graphopt")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available_commands()
    command = "run"
    if argv and argv[0] in commands:
        command = argv.pop(0)
    parser = build_parser(command)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line message
        return 0 if e.code == 0 else 2
    _setup_logging(args)
    try:
        from .. import pipeline

        for module in args.plugin:
            pipeline.load_plugin(module)
        return int(args._module.run(args) or 0)
    except GraphoptError as e:
        if args.debug:
            raise
        print(f"graphopt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("graphopt: error: out of memory", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
