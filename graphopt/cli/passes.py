"""`graphopt passes`: every pass and group, with a one-line description and options."""

from __future__ import annotations

import argparse
import json
import sys

from .. import pipeline
from rich.markup import escape

from .present import console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    passes, groups = pipeline.list_passes(), pipeline.groups()
    if args.json:
        json.dump({
            "passes": {
                n: {"contract": c.contract, "description": c.summary(),
                    "options": {k: {"type": o.type.__name__, "default": o.default, "help": o.help,
                                    "choices": list(o.choices) if o.choices else None}
                                for k, o in c.options.items()}}
                for n, c in passes.items()
            },
            "groups": {n: {"members": list(g.members), "description": g.description,
                           "fixed_point": g.fixed_point} for n, g in groups.items()},
        }, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    c = console()
    c.print("[bold]groups[/]")
    for name, g in groups.items():
        loop = " (to a fixed point)" if g.fixed_point else ""
        c.print(f"  [cyan]{name:<18}[/] {g.description}{loop}: {', '.join(g.members) or '(empty)'}")
    c.print("[bold]passes[/]")
    for name, cls in passes.items():
        c.print(f"  [cyan]{name:<18}[/] \\[{cls.contract}] {escape(cls.summary())}")
        for key, opt in cls.options.items():
            c.print(f"      {key}: {opt.describe()}  {opt.help}")
    return 0
