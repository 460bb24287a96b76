"""Presentation helpers shared by the commands: console, sizes, progress."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# --- shared byte formatter (issue 14, helper E): one formatter for the CLI and the reports
from .._format import format_bytes  # noqa: E402, F401  (imported from here by the commands)
# --- end shared byte formatter


@contextlib.contextmanager
def progress_callback(quiet: bool, console=None) -> Iterator[Callable[[str], None] | None]:
    """Progress on a terminal only (silent with -q or in pipes): a spinner line naming the
    running step, and a bar with completed/total and the time left for each counted step
    the library reports (graphopt.progress: verification examples, calibration batches).
    While it is shown, graphopt's log messages go through rich's RichHandler on the same
    console, so a warning is printed above the bar, never onto it. `console` (a rich
    Console) is for tests; by default stderr, when it is a terminal."""
    if quiet:
        yield None
        return
    if console is None:
        if not sys.stderr.isatty():
            yield None
            return
        from rich.console import Console

        console = Console(stderr=True)
    elif not console.is_terminal:
        yield None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeRemainingColumn)

    from .. import progress as _progress

    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), _Counted(BarColumn()),
                   _Counted(MofNCompleteColumn()), _Counted(TimeRemainingColumn()),
                   console=console, transient=True)
    with bar, _logging_through(console), _progress.reporting(_RichSink(bar)):
        step = bar.add_task("starting", total=None)
        # a bare pass name reads "running NAME"; longer messages are shown as they are
        yield lambda what: bar.update(step, description=what if " " in what else f"running {what}")


def _Counted(inner):  # noqa: N802 - reads like a column class at the call site
    """`inner` (a rich progress column) for a counted task; nothing on the step line."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Counted(ProgressColumn):
        def render(self, task):
            return inner.render(task) if task.total is not None else Text("")

    return Counted()


class _RichSink:
    """graphopt.progress sink: one bar per counted step, removed when it ends."""

    def __init__(self, bar):
        self.bar = bar

    def start(self, label: str, total: int | None):
        key = self.bar.add_task(label, total=total)
        self.bar.refresh()
        return key

    def advance(self, key, n: int = 1) -> None:
        self.bar.advance(key, n)
        self.bar.refresh()   # each count shows (steps are examples or batches: not many)

    def finish(self, key) -> None:
        self.bar.remove_task(key)


@contextlib.contextmanager
def _logging_through(console) -> Iterator[None]:
    """graphopt's console log handlers (plain StreamHandlers, as the CLI sets up) swapped
    for one RichHandler on `console` (same level, a 'graphopt:' prefix) for the time of
    the block, restored after; other handlers (files, pytest's capture) are left alone."""
    import logging

    from rich.highlighter import NullHighlighter
    from rich.logging import RichHandler

    root = logging.getLogger("graphopt")
    swapped = [h for h in root.handlers if type(h) is logging.StreamHandler]
    if not swapped:
        yield
        return
    level = min(h.level for h in swapped)
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False,
                          rich_tracebacks=False, level=level, highlighter=NullHighlighter())
    handler.setFormatter(logging.Formatter("graphopt: %(message)s"))
    for h in swapped:
        root.removeHandler(h)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in swapped:
            root.addHandler(h)
