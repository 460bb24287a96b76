"""Presentation helpers shared by the commands: console, sizes, progress."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@contextlib.contextmanager
def progress_callback(quiet: bool) -> Iterator[Callable[[str], None] | None]:
    """A spinner naming the running step, on a terminal only (silent with -q or in pipes)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status("starting") as status:
        # a bare pass name reads "running NAME"; longer messages are shown as they are
        yield lambda what: status.update(what if " " in what else f"running {what}")
