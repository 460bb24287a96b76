"""Search spaces: a pipeline spec whose options may be lists of choices, or a TOML file.

    clean,fuse,prune(enabled=[true,false], ratio=[0.2,0.3]),quant(mode=[none,static,dynamic])

Every option written as a list is a choice (unless the pass option itself takes a list: then
a list is its one value, and choices of lists are written in TOML). `enabled=[true,false]` lets
a trial skip the pass; a `none` choice does the same unless `none` is a legal value of that
option. The spec is parsed by `graphopt.spec.parse_spec`; names and option values are
checked against the registered passes before anything runs.

TOML form (for larger spaces)::

    [[pass]]
    name = "clean"
    [[pass]]
    name = "prune"
    enabled = [true, false]
    ratio = [0.2, 0.3, 0.5]
    exclude = [["conv1"], []]   # choices of a list option: a list of lists

or simply ``space = "clean,fuse,quant(mode=[none,static])"``.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import GraphoptError
from ..pipeline import discover, get_pass, groups
from ..spec import parse_spec, word_value

SKIP = "none"


@dataclass
class Param:
    """One choice the search makes: `name` is the Optuna parameter name."""

    name: str
    choices: list


@dataclass
class SpaceItem:
    pass_name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)  # option -> Param ("enabled" too)
    skip_options: frozenset = frozenset()  # options whose `none` choice skips the pass
    list_options: frozenset = frozenset()  # list-typed options: choices are rendered lists


@dataclass
class Space:
    items: list[SpaceItem]
    source: str

    @property
    def params(self) -> list[Param]:
        return [p for it in self.items for p in it.params.values()]

    def size(self) -> int:
        n = 1
        for p in self.params:
            n *= len(p.choices)
        return n

    def grid(self) -> dict[str, list]:
        return {p.name: list(p.choices) for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        """Ask an Optuna trial for every parameter; returns the chosen values."""
        return {p.name: trial.suggest_categorical(p.name, p.choices) for p in self.params}

    def spec_for(self, values: dict[str, Any]) -> str:
        """The pipeline spec of one point of the space (passes a choice skips are left out)."""
        parts = []
        for it in self.items:
            opts = dict(it.fixed)
            skipped = False
            for opt, p in it.params.items():
                v = values[p.name]
                if opt == "enabled":
                    skipped |= not v
                elif v == SKIP and opt in it.skip_options:
                    skipped = True
                elif opt in it.list_options:
                    opts[opt] = _Raw(v)
                else:
                    opts[opt] = v
            if opts.pop("enabled", True) is False:
                skipped = True
            if skipped:
                continue
            if opts:
                parts.append(f"{it.pass_name}({','.join(f'{k}={_render(v)}' for k, v in opts.items())})")
            else:
                parts.append(it.pass_name)
        return ",".join(parts) if parts else ""

    def all_specs(self) -> list[str]:
        names = [p.name for p in self.params]
        return [self.spec_for(dict(zip(names, combo)))
                for combo in itertools.product(*(p.choices for p in self.params))]


_PLAIN = re.compile(r"^[^\s(),=\[\]\"']+$")


class _Raw(str):
    """Spec text written as is (a list option's rendered choice)."""


def _render(v: Any) -> str:
    if isinstance(v, _Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_render(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    s = str(v)
    return s if _PLAIN.match(s) else f'"{s}"'


def _coerce_literal(v: Any) -> Any:
    """parse_spec leaves list items as strings: read numbers and booleans back."""
    return word_value(v) if isinstance(v, str) else v


def parse_space(text_or_path: str) -> Space:
    """A space from a spec string, or from a .toml file when the argument names one."""
    if text_or_path.endswith(".toml") or (os.path.isfile(text_or_path) and "(" not in text_or_path):
        return _parse_toml(text_or_path)
    return _build(((it.name, dict(it.options), False) for it in parse_spec(text_or_path)), text_or_path)


def _parse_toml(path: str) -> Space:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise GraphoptError(f"{path}: TOML spaces need Python 3.11 or later (tomllib)") from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise GraphoptError(f"{path}: space file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise GraphoptError(f"{path}: not a readable TOML space ({e})") from None
    if "space" in data and "pass" not in data:
        if not isinstance(data["space"], str):
            raise GraphoptError(f"{path}: 'space' must be a pipeline spec string")
        return parse_space(data["space"])
    entries = data.get("pass")
    if not isinstance(entries, list) or not entries:
        raise GraphoptError(f"{path}: expected [[pass]] tables (or space = \"SPEC\")")
    items = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise GraphoptError(f"{path}: [[pass]] #{i + 1} has no name")
        opts = {k: v for k, v in e.items() if k != "name"}
        items.append((e["name"], opts, True))
    return _build(items, path)


def _build(items, source: str) -> Space:
    discover()
    known_groups = groups()
    out: list[SpaceItem] = []
    seen: dict[str, int] = {}
    for name, opts, typed in items:
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        item = SpaceItem(name)
        if name in known_groups:
            pass_options = {}
        else:
            pass_options = get_pass(name).options  # unknown names raise a one-line error
        skip_options: set = set()
        list_options: set = set()
        for opt, raw in opts.items():
            if opt == "enabled":
                values = raw if isinstance(raw, list) else [raw]
                values = [_coerce_literal(v) for v in values]
                if not values or any(not isinstance(v, bool) for v in values):
                    raise GraphoptError(f"space {source!r}: {label}: enabled takes true/false")
                if len(values) == 1:
                    item.fixed["enabled"] = values[0]
                else:
                    item.params["enabled"] = Param(f"{label}.enabled", _dedupe(values))
                continue
            if name in known_groups:
                raise GraphoptError(f"space {source!r}: group '{name}' takes no options; give them to its passes")
            option = pass_options.get(opt)
            if option is None:
                raise GraphoptError(f"space {source!r}: pass '{name}' has no option '{opt}' "
                                    f"(options: {', '.join(pass_options) or 'none'})")
            if option.type is list:
                # a list is the option's one value; in TOML a list of lists is a choice
                if typed and isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
                    choices = raw
                else:
                    choices = [raw]
            else:
                choices = raw if isinstance(raw, list) else [raw]
                if not typed:
                    choices = [_coerce_literal(c) for c in choices]
            if not choices:
                raise GraphoptError(f"space {source!r}: {label}.{opt} has no choices")
            checked = []
            for c in choices:
                if isinstance(c, str) and c.lower() == SKIP and not (option.choices and SKIP in option.choices):
                    skip_options.add(opt)
                    checked.append(SKIP)
                else:
                    v = option.coerce(name, opt, c)
                    checked.append(tuple(v) if isinstance(v, list) else v)
            checked = _dedupe(checked)
            if len(checked) == 1:
                if checked[0] == SKIP and opt in skip_options:
                    item.fixed["enabled"] = False
                else:
                    v = checked[0]
                    item.fixed[opt] = list(v) if isinstance(v, tuple) else v
            else:
                # Optuna's categorical choices must be None/bool/int/float/str
                if option.type is list:
                    list_options.add(opt)
                item.params[opt] = Param(f"{label}.{opt}", [
                    _render(list(c)) if isinstance(c, tuple) else c for c in checked])
        item.skip_options = frozenset(skip_options)
        item.list_options = frozenset(list_options)
        out.append(item)
    space = Space(out, source)
    if not space.params:
        raise GraphoptError(f"space {source!r} has no choices: write options as lists, "
                            "e.g. quant(mode=[none,static])")
    return space


def _dedupe(values: list) -> list:
    out = []
    for v in values:
        if not any(v == o and type(v) is type(o) for o in out):
            out.append(v)
    return out
