"""The input space compare() draws from, probed on the reference model, and the
reference outputs run ahead of a check."""

from __future__ import annotations

import numpy as np
import onnx

from .inputs import Example, InputSpace
from .runner import InvalidInput, Runner


def make_space(model: onnx.ModelProto, runner: Runner, input_shapes=None, input_ranges=None,
               space: InputSpace | None = None) -> InputSpace:
    """The input space of a model (or `space`, made by InputSpace.from_model), probed:
    symbolic dims are raised until the model accepts the smallest example (e.g. a CNN
    whose image dims are symbolic)."""
    if space is None:
        space = InputSpace.from_model(model, input_shapes, input_ranges)
    space.probed_ok = False
    space.probe_error = ""
    dims = space.min_dims()
    too_big = _too_big(space, dims)
    if too_big:
        space.probe_error = too_big
        space.too_big = True
        return space
    recipe = {s.name: ({"float": "normal", "int": "uniform", "bool": "random"}[s.kind]
                       if s.float_range is None else "uniform", 0) for s in space.specs}
    for attempt in range(7):
        try:
            runner.run(Example(dims, recipe, space).feeds)
            space.probed_ok = True
            break
        except InvalidInput as e:
            space.probe_error = str(e)[:200]
        except (MemoryError, ValueError) as e:  # numpy: "array is too big", "Maximum allowed size exceeded"
            space.probe_error = f"cannot allocate the inputs ({e})"
            break
        grow = {k: (v * 2 if v > 1 else (8 if attempt == 0 else 2)) for k, v in dims.items()
                if k in space.dim_ranges and space.dim_ranges[k][0] != space.dim_ranges[k][1]
                and not _is_batch(space, k)}
        if not grow:
            break
        dims = {**dims, **grow}
        if space.elements(dims) > space.max_elements:
            break
    if space.probed_ok:
        space.raise_minimum(dims)
        space.bound_size()
        if not may_be_random(model):
            return space
        feeds = Example(dims, recipe, space).feeds
        try:
            first, again = runner.run(feeds), runner.run(feeds, cache=False)
            space.deterministic = all(
                np.array_equal(np.asarray(x), np.asarray(y), equal_nan=np.asarray(x).dtype.kind in "fc")
                for x, y in zip(first, again))
        except InvalidInput:
            pass
    return space


def _count(n: int) -> str:
    return f"2**{n.bit_length() - 1}" if n > 1024 and n & (n - 1) == 0 else f"{n:,}"


def _too_big(space: InputSpace, dims: dict[str, int]) -> str:
    """Why the smallest example cannot be drawn ('' if it can)."""
    shapes = space.shapes_for(dims)
    sizes = {name: int(np.prod(shape, dtype=object)) for name, shape in shapes.items()}
    if sum(sizes.values()) <= space.max_elements:
        return ""
    name = max(sizes, key=sizes.get)
    spec = next(s for s in space.specs if s.name == name)
    fixed = int(np.prod([d for d in spec.dims if isinstance(d, int)], dtype=object))
    hint = ("its fixed dims alone are too large: verify it with --samples" if fixed > space.max_elements
            else "give --input-shape")
    return (f"input '{name}' needs {_count(sizes[name])} elements (shape {list(shapes[name])}), more than the "
            f"{_count(space.max_elements)} verification draws at most; {hint}")


def run_ahead(runner: Runner, space: InputSpace, samples: list[dict] | None, examples: int, seed: int,
              stop=lambda: False) -> None:
    """Run `runner`'s model on the inputs compare() judges first, in compare()'s order
    (the real samples, then the seeded draws), until `examples` were accepted or
    `stop()` says so. The outputs land in the runner's cache, so a later compare() given
    this runner and space (the same seed and samples) finds its reference outputs ready."""
    used = 0
    for sample in (samples or [])[:examples]:
        if stop():
            return
        try:
            runner.run(space.from_sample(sample).feeds)
        except InvalidInput:
            return  # compare() stops on a rejected sample
        used += 1
    todo = examples - used
    if todo <= 0 or not space.probed_ok:
        return
    valid = 0
    for ex in _attempts(space, todo, seed):
        if valid >= todo or stop():
            return
        try:
            runner.run(ex.feeds)
        except InvalidInput:
            continue
        valid += 1


_RANDOM_OPS = {"Multinomial", "Bernoulli", "Dropout"}


def may_be_random(model: onnx.ModelProto) -> bool:
    """Whether the model may give different outputs on the same input: it has a Random*
    op, Multinomial, Bernoulli, Dropout (random when given training_mode), or an op of a
    custom domain (unknown). Only such models pay for the re-run that checks it."""
    from ..ir import iter_proto_nodes

    local = {(f.domain, f.name) for f in model.functions}
    all_nodes = list(iter_proto_nodes(model.graph))
    for f in model.functions:
        all_nodes.extend(f.node)
    return any(n.op_type.startswith("Random") or n.op_type in _RANDOM_OPS
               or (n.domain not in ("", "ai.onnx", "ai.onnx.ml") and (n.domain, n.op_type) not in local)
               for n in all_nodes)


def _is_batch(space: InputSpace, key: str) -> bool:
    return any(s.dims and s.dims[0] == key for s in space.specs) and not any(
        key in s.dims[1:] for s in space.specs)


def _attempts(space: InputSpace, n: int, seed: int) -> list[Example]:
    """The drawn inputs tried for `n` valid examples, in order (compare() and run_ahead()
    must agree on them for the reference outputs run ahead to be cache hits)."""
    return space.draw(3 * n, seed)
