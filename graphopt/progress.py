"""Counted progress of long steps (verification examples, calibration batches).

Library code reports here and never prints: `with progress.task("verifying", 8) as t:
t.advance()`. Whoever shows progress (the CLI's rich bar, graphopt.cli.present)
installs a sink with `reporting(sink)`; without one every call is a cheap no-op.
A sink has `start(label, total) -> key`, `advance(key, n)` and `finish(key)`; it is
called from whichever thread does the work (verification runs beside the passes), so
it must be thread-safe (rich's Progress is).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterator, Protocol

log = logging.getLogger(__name__)

_lock = threading.Lock()
_sink: "Sink | None" = None


class Sink(Protocol):
    def start(self, label: str, total: int | None) -> Any: ...
    def advance(self, key: Any, n: int = 1) -> None: ...
    def finish(self, key: Any) -> None: ...


@contextlib.contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """Send progress to `sink` inside the block (the previous sink is restored after)."""
    global _sink
    with _lock:
        previous, _sink = _sink, sink
    try:
        yield
    finally:
        with _lock:
            _sink = previous


class Task:
    """One counted step. `advance` never goes past `total` (a checker that judges
    more inputs than asked, e.g. while shrinking a counterexample, stays at total)."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.completed = label, total, 0
        self._sink = _sink
        self._key = None
        if self._sink is not None:
            try:
                self._key = self._sink.start(label, total)
            except Exception:  # noqa: BLE001 - showing progress never breaks the work
                log.debug("progress sink failed", exc_info=True)
                self._sink = None

    def advance(self, n: int = 1) -> None:
        if self.total is not None:
            n = min(n, self.total - self.completed)
        if n <= 0:
            return
        self.completed += n
        if self._sink is not None:
            try:
                self._sink.advance(self._key, n)
            except Exception:  # noqa: BLE001
                log.debug("progress sink failed", exc_info=True)

    def close(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.finish(self._key)
            except Exception:  # noqa: BLE001
                log.debug("progress sink failed", exc_info=True)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task(label: str, total: int | None) -> Task:
    """A counted step reported to the current sink (if any)."""
    return Task(label, total)


def active() -> bool:
    """Whether anyone shows progress (skip preparing labels otherwise)."""
    return _sink is not None
