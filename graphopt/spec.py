"""The pipeline spec language: ``clean,fuse,prune(ratio=0.3),quant(mode=static, exclude=[Conv,Gemm])``.

A spec is a comma-separated list of pass or group names, each optionally with options
``name=value``: a value is a number, true/false, a word, a quoted string or a list
``[a,b]``. `parse_spec` turns the text into items (names are resolved by
graphopt.pipeline); `Option` declares a pass's typed option and coerces the values given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import GraphoptError

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*$")

# ---------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """A typed option of a pass. `type` is int, float, bool, str or list (of str)."""

    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None

    def coerce(self, pass_name: str, name: str, raw: Any) -> Any:
        def bad(why: str) -> GraphoptError:
            return GraphoptError(f"pass '{pass_name}': option {name}={raw!r}: {why}")

        value = raw
        if self.type is bool:
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
                value = True
            elif isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise bad("expected true or false")
        elif self.type is int:
            try:
                value = int(raw)
                if isinstance(raw, float) and raw != value:
                    raise ValueError
            except (TypeError, ValueError):
                raise bad("expected an integer") from None
        elif self.type is float:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise bad("expected a number") from None
        elif self.type is list:
            if isinstance(raw, str):
                value = [raw] if raw else []
            elif isinstance(raw, (list, tuple)):
                value = [str(v) for v in raw]
            else:
                raise bad("expected a list like [a,b]")
        elif self.type is str:
            value = str(raw)
        if self.choices is not None:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item not in self.choices:
                    raise bad(f"expected one of {', '.join(map(str, self.choices))}")
        return value

    def describe(self) -> str:
        kind = self.type.__name__
        if self.choices:
            kind = "|".join(map(str, self.choices))
        return f"{kind}={self.default!r}" if self.default is not None else kind



# ---------------------------------------------------------------------------- spec parser


@dataclass(frozen=True)
class SpecItem:
    name: str
    options: dict[str, Any]


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"[^"]*"|'[^']*')
      | (?P<punct>[(),=\[\]])
      | (?P<word>[^\s(),=\[\]"']+)
    )""",
    re.VERBOSE,
)


def _tokenize(spec: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    spec = spec.rstrip()
    while pos < len(spec):
        m = _TOKEN.match(spec, pos)
        if not m or m.end() == pos:
            raise GraphoptError(f"invalid pipeline spec at column {pos + 1}: {spec!r}")
        pos = m.end()
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
    return tokens


def word_value(text: str) -> Any:
    """A bare word of a spec as a value: an int, a float, true/false, else the text."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _literal(kind: str, text: str) -> Any:
    return text[1:-1] if kind == "str" else word_value(text)


def parse_spec(spec: str) -> list[SpecItem]:
    """Parse a pipeline spec into items (names are not resolved here)."""
    if not spec or not spec.strip():
        raise GraphoptError("empty pipeline spec (try -p clean)")
    toks = _tokenize(spec)
    items: list[SpecItem] = []
    i = 0

    def err(msg: str) -> GraphoptError:
        return GraphoptError(f"invalid pipeline spec {spec!r}: {msg}")

    def expect(value: str) -> None:
        nonlocal i
        if i >= len(toks) or toks[i][1] != value:
            got = toks[i][1] if i < len(toks) else "end of spec"
            raise err(f"expected '{value}', got '{got}'")
        i += 1

    while True:
        if i >= len(toks) or toks[i][0] != "word":
            got = toks[i][1] if i < len(toks) else "end of spec"
            raise err(f"expected a pass name, got '{got}'")
        name = toks[i][1]
        if not NAME_RE.match(name):
            raise err(f"'{name}' is not a valid pass name")
        i += 1
        opts: dict[str, Any] = {}
        if i < len(toks) and toks[i][1] == "(":
            i += 1
            while i < len(toks) and toks[i][1] != ")":
                if toks[i][0] != "word":
                    raise err(f"expected an option name, got '{toks[i][1]}'")
                key = toks[i][1]
                i += 1
                expect("=")
                if i < len(toks) and toks[i][1] == "[":
                    i += 1
                    values = []
                    while i < len(toks) and toks[i][1] != "]":
                        if toks[i][0] not in ("word", "str"):
                            raise err(f"unexpected '{toks[i][1]}' in list")
                        values.append(_literal("str", f'"{toks[i][1]}"') if toks[i][0] == "word" else _literal(*toks[i]))
                        i += 1
                        if i < len(toks) and toks[i][1] == ",":
                            i += 1
                    expect("]")
                    value: Any = values
                elif i < len(toks) and toks[i][0] in ("word", "str"):
                    value = _literal(*toks[i])
                    i += 1
                else:
                    raise err(f"option '{key}' has no value")
                if key in opts:
                    raise err(f"option '{key}' given twice")
                opts[key] = value
                if i < len(toks) and toks[i][1] == ",":
                    i += 1
            expect(")")
        items.append(SpecItem(name, opts))
        if i >= len(toks):
            break
        expect(",")
    return items
