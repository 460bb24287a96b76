"""Numbers as people read them (counts, bytes, milliseconds, changes, percents; "–" for
a missing value), shared by the reports and the command line. They live in core because
core modules must not import graphopt.cli."""

from __future__ import annotations

import html
import math
from typing import Any


def format_count(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def format_bytes(n: float | None) -> str:
    """Bytes in B, KB, MB or GB (powers of 1024): 113400 -> '110.7 KB'."""
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_ms(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n:.0f} ms" if n >= 100 else f"{n:.1f} ms" if n >= 10 else f"{n:.3g} ms"


def format_num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        return f"{x:.3g}"
    return str(x)


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def format_change(before: float | None, after: float | None) -> str:
    """The change from `before` to `after`: a signed percent, or a factor past 2x."""
    if not before or after is None:
        return ""
    r = after / before
    if r >= 2:
        return f"×{r:.3g}"
    if r <= 0.5 and r > 0:
        return f"{(r - 1) * 100:.1f}% (÷{1 / r:.3g})"
    pct = (r - 1) * 100
    if abs(pct) < 0.05:
        return "±0%"
    return f"{pct:+.1f}%" if abs(pct) < 10 else f"{pct:+.0f}%"


def format_pct(x: float) -> str:
    """A fraction as a percent with sane precision (0.0123 -> 1.23%)."""
    v = x * 100
    if v == 0:
        return "0%"
    if abs(v) >= 10:
        return f"{v:.0f}%"
    if abs(v) >= 0.01:
        return f"{v:.3g}%"
    return f"{v:.1e}%"
