"""Arguments shared by several commands, and turning them into library objects."""

from __future__ import annotations

import argparse
import re

from ..errors import GraphoptError
from ..pipeline import BUDGET_METRICS, TARGETS, PassContext


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'name=1x3x224x224' -> ('name', (1, 3, 224, 224))."""
    m = re.fullmatch(r"\s*([^=]+?)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)?\s*", text)
    if not m:
        raise GraphoptError(f"bad --input-shape '{text}' (expected name=1x3x224x224)")
    dims = tuple(int(d) for d in re.split(r"[x,]", m.group(2))) if m.group(2) else ()
    return m.group(1), dims


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    """'name=lo:hi' -> ('name', (lo, hi))."""
    m = re.fullmatch(r"\s*([^=]+?)\s*=\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*", text)
    try:
        lo, hi = float(m.group(2)), float(m.group(3))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise GraphoptError(f"bad --input-range '{text}' (expected name=lo:hi)") from None
    if not lo <= hi:
        raise GraphoptError(f"bad --input-range '{text}': low end above high end")
    return m.group(1), (lo, hi)  # type: ignore[union-attr]


def parse_budget(text: str) -> tuple[str, float]:
    """'cosine=0.99' -> ('cosine', 0.99)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or name.strip() not in BUDGET_METRICS:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise GraphoptError(f"bad --budget '{text}' (expected METRIC=VALUE with METRIC one of "
                            f"{', '.join(BUDGET_METRICS)}, e.g. rel_l2=0.05)") from None


def add_input_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inputs")
    g.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="bind an input's shape (repeatable)")
    g.add_argument("--input-range", action="append", default=[], metavar="NAME=LO:HI",
                   help="value range of an input for generated data (repeatable)")
    g.add_argument("--samples", metavar="DIR",
                   help="folder of .npz files keyed by input name: real inputs used first")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_context_args(parser: argparse.ArgumentParser) -> None:
    add_input_args(parser)
    g = parser.add_argument_group("target")
    g.add_argument("--target", choices=TARGETS, default="onnx",
                   help="runtime the model is optimized for: portable onnx (default), "
                        "onnxruntime (contrib ops allowed) or tvm")
    g.add_argument("--allow-opset-upgrade", action="store_true",
                   help="passes may convert the model to a newer opset")
    g.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="error budget of lossy passes (quant, fp16, prune) that do not set their own: "
                        "rel_l2=0.05 (at most), cosine=0.99 or top1=0.99 (at least); repeatable")


def context_from_args(args: argparse.Namespace) -> PassContext:
    from ..samples import load_samples

    return PassContext(
        target=getattr(args, "target", "onnx"),
        allow_opset_upgrade=getattr(args, "allow_opset_upgrade", False),
        input_shapes=dict(parse_shape(s) for s in args.input_shape),
        input_ranges=dict(parse_range(r) for r in args.input_range),
        samples=load_samples(args.samples) if args.samples else None,
        seed=args.seed,
        # `graphopt verify` parses --budget itself (argparse type): tuples already
        budget=dict(b if isinstance(b, tuple) else parse_budget(b) for b in getattr(args, "budget", [])),
    )


def add_verify_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("verification")
    g.add_argument("--no-verify", action="store_true", help="do not check passes numerically")
    g.add_argument("--verify-examples", type=int, default=None, metavar="N",
                   help="inputs drawn per check (default 8)")
    g.add_argument("--on-fail", choices=("abort", "revert"), default="abort",
                   help="on a failed check: stop (exit 1, default) or undo that pass and go on")
    g.add_argument("--repro-dir", default=None, metavar="DIR",
                   help="where failure reproducers go (default ./graphopt-repro)")


def verify_options_from_args(args: argparse.Namespace) -> dict:
    opts: dict = {"on_fail": args.on_fail, "seed": args.seed}
    if args.verify_examples is not None:
        if args.verify_examples < 1:
            raise GraphoptError("--verify-examples must be at least 1")
        opts["examples"] = args.verify_examples
    if args.repro_dir:
        opts["repro_dir"] = args.repro_dir
    return opts
