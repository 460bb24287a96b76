"""Input spaces: what values a model's graph inputs may take.

A draw is a small *recipe* (symbolic dim values, and per input a value kind and a seed);
the arrays are made from it with numpy, so drawing stays fast even for 224x224 images.
Checks draw recipes directly with a seeded generator (InputSpace.draw). When one fails,
hypothesis searches the recipe space (InputSpace.strategy) and shrinks a failure: smaller
dims, the simplest value kind, seed 0 -- so a shrunk counterexample has small shapes and
plain values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from ..errors import GraphoptError

log = logging.getLogger(__name__)

# Float value kinds, simplest first (hypothesis shrinks towards the first).
FLOAT_KINDS = ("normal", "uniform", "ones", "zeros", "small", "large", "negative", "mixed")
INT_KINDS = ("uniform", "low", "high")
BOOL_KINDS = ("random", "false", "true")

DEFAULT_INT_RANGE = (0, 8)           # [lo, hi) for integer inputs with no known bound
DEFAULT_MAX_ELEMENTS = 1 << 21       # total elements of one example, all inputs together
BATCH_DIM_RANGE = (1, 3)             # symbolic dim 0
OTHER_DIM_RANGE = (1, 8)             # other symbolic dims (raised by probing if too small)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}
_INT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
              onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
              onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
# the narrow types of newer opsets (drawn like floats / ints, then cast)
_FLOAT_TYPES |= {getattr(onnx.TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                                         "FLOAT8E5M2FNUZ", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
_INT_TYPES |= {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2") if hasattr(onnx.TensorProto, n)}


def _iinfo(dtype: np.dtype):
    try:
        return np.iinfo(dtype)
    except ValueError:
        import ml_dtypes

        return ml_dtypes.iinfo(dtype)


@dataclass
class InputSpec:
    name: str
    elem_type: int
    dtype: np.dtype
    dims: list            # int, str (symbolic name) or None (unknown)
    int_range: tuple[int, int] | None = None   # [lo, hi)
    float_range: tuple[float, float] | None = None
    fixed_shape: tuple[int, ...] | None = None
    # "tensor", "sequence" (a list of tensors of this type and shape), "optional tensor"
    # or "optional sequence" (drawn present)
    container: str = "tensor"

    @property
    def kind(self) -> str:
        if self.elem_type == onnx.TensorProto.BOOL:
            return "bool"
        if self.elem_type in _INT_TYPES:
            return "int"
        if self.elem_type in _FLOAT_TYPES:
            return "float"
        return "other"


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real (non-initializer) inputs of a model with their dtypes and dims."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        container, tt = _unwrap(vi.type)
        if tt is None:
            raise GraphoptError(f"input '{vi.name}' is a {vi.type.WhichOneof('value') or 'value of no type'}, "
                                "not a tensor or a sequence of tensors: cannot generate values for it")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            raise GraphoptError(f"input '{vi.name}' has an unsupported element type {tt.elem_type}") from None
        dims: list = []
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
        elif container.endswith("sequence"):
            dims.append(None)   # elements of unknown rank: drawn as vectors
        out.append(InputSpec(vi.name, tt.elem_type, dtype, dims, container=container))
    return out


def _unwrap(t: onnx.TypeProto, optional: bool = False):
    """(container, tensor type) of an input type; (.., None) if not drawable."""
    prefix = "optional " if optional else ""
    if t.HasField("tensor_type"):
        return prefix + "tensor", t.tensor_type
    if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("tensor_type"):
        return prefix + "sequence", t.sequence_type.elem_type.tensor_type
    if t.HasField("optional_type") and not optional:
        return _unwrap(t.optional_type.elem_type, optional=True)
    return "", None


def signature(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(s.name, s.elem_type) for s in graph_inputs(model)]


# ------------------------------------------------------------------- integer bounds


_PASS_THROUGH = {"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand",
                 "Transpose", "Tile", "Concat"}


def _static_shapes(model: onnx.ModelProto) -> dict[str, list]:
    shapes: dict[str, list] = {}
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes.setdefault(vi.name, [d.dim_value if d.HasField("dim_value") else None
                                        for d in vi.type.tensor_type.shape.dim])
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    return shapes


def _const_int(model: onnx.ModelProto, name: str) -> int | None:
    for t in model.graph.initializer:
        if t.name == name:
            v = onnx.numpy_helper.to_array(t)
            return int(v.reshape(-1)[0]) if v.size else None
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    v = onnx.numpy_helper.to_array(a.t)
                    return int(v.reshape(-1)[0]) if v.size else None
    return None


def infer_int_bounds(model: onnx.ModelProto, name: str, inferred: onnx.ModelProto | None = None) -> tuple[int, int] | None:
    """An upper bound [0, hi) for an integer input from how it is used: Gather /
    GatherElements indices (the gathered dim), OneHot indices (depth), GatherND,
    ScatterElements / ScatterND indices. Follows value-preserving ops (Cast, Reshape...)."""
    if inferred is None:
        inferred = _inferred(model)
    shapes = _static_shapes(inferred)
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in inferred.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    bounds: list[int] = []
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n in users.get(t, []):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type in _PASS_THROUGH and n.input and n.input[0] == t:
                todo.extend(n.output)
            elif n.op_type in ("Gather", "GatherElements") and len(n.input) > 1 and n.input[1] == t:
                shape = shapes.get(n.input[0])
                axis = int(attrs.get("axis", 0))
                if shape and -len(shape) <= axis < len(shape) and shape[axis]:
                    bounds.append(int(shape[axis]))
            elif n.op_type == "GatherND" and len(n.input) > 1 and n.input[1] == t:
                shape = shapes.get(n.input[0])
                if shape and all(shape):
                    bounds.append(int(min(shape)))
            elif n.op_type in ("ScatterElements", "ScatterND") and len(n.input) > 1 and n.input[1] == t:
                shape = shapes.get(n.input[0])
                if shape and all(shape):
                    axis = int(attrs.get("axis", 0)) if n.op_type == "ScatterElements" else None
                    bounds.append(int(shape[axis]) if axis is not None else int(min(shape)))
            elif n.op_type == "OneHot" and n.input[0] == t and len(n.input) > 1:
                depth = _const_int(inferred, n.input[1])
                if depth:
                    bounds.append(depth)
    return (0, min(bounds)) if bounds else None


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    from ..analysis.shapes import onnx_inferred, skeleton  # shapes only: leave the weights' data out

    inferred = onnx_inferred(skeleton(model), data_prop=False)
    return model if inferred is None else inferred  # bounds are a best effort


# ------------------------------------------------------------------- the input space


@dataclass
class InputSpace:
    """Everything needed to draw examples for a model's inputs."""

    specs: list[InputSpec]
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # symbolic name -> [lo, hi]
    max_elements: int = DEFAULT_MAX_ELEMENTS
    probed_ok: bool = True     # the reference model accepted the smallest example
    probe_error: str = ""
    deterministic: bool = True
    too_big: bool = False      # the smallest example exceeds max_elements (probe_error says which input)

    @classmethod
    def from_model(
        cls, model: onnx.ModelProto, input_shapes: dict | None = None,
        input_ranges: dict | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> "InputSpace":
        specs = graph_inputs(model)
        input_shapes = dict(input_shapes or {})
        input_ranges = dict(input_ranges or {})
        names = {s.name for s in specs}
        for given in list(input_shapes) + list(input_ranges):
            if given not in names:
                raise GraphoptError(
                    f"--input-shape/--input-range names '{given}', which is not an input "
                    f"(inputs: {', '.join(sorted(names)) or 'none'})")
        dim_ranges: dict[str, tuple[int, int]] = {}
        inferred = None
        for s in specs:
            if s.kind == "other":
                raise GraphoptError(f"input '{s.name}' has dtype {s.dtype}: cannot generate values for it")
            if s.name in input_shapes:
                shape = tuple(int(d) for d in input_shapes[s.name])
                if s.dims and len(shape) != len(s.dims):
                    raise GraphoptError(f"--input-shape {s.name}: rank {len(shape)} but the input has rank {len(s.dims)}")
                for d, v in zip(s.dims, shape):
                    if isinstance(d, int) and d != v:
                        raise GraphoptError(f"--input-shape {s.name}={'x'.join(map(str, shape))} "
                                            f"conflicts with its fixed dims {s.dims}")
                    if isinstance(d, str):
                        dim_ranges[d] = (v, v)   # the same name elsewhere takes the same value
                s.fixed_shape = shape
            if s.name in input_ranges:
                lo, hi = input_ranges[s.name]
                if s.kind == "int" or s.kind == "bool":
                    s.int_range = (int(np.ceil(lo)), int(np.floor(hi)) + 1)
                else:
                    s.float_range = (float(lo), float(hi))
            elif s.kind == "int":
                if inferred is None:
                    inferred = _inferred(model)
                s.int_range = infer_int_bounds(model, s.name, inferred) or DEFAULT_INT_RANGE
                info = _iinfo(s.dtype)
                s.int_range = (max(s.int_range[0], int(info.min)), min(s.int_range[1], int(info.max) + 1))
        for s in specs:
            if s.fixed_shape is not None:
                continue
            for axis, d in enumerate(s.dims):
                if isinstance(d, str) and d not in dim_ranges:
                    dim_ranges[d] = BATCH_DIM_RANGE if axis == 0 else OTHER_DIM_RANGE
        space = cls(specs, dim_ranges, max_elements)
        space._unnamed_key()
        return space

    def _unnamed_key(self) -> None:
        # Unknown dims get a name of their own so they are drawn like symbolic ones.
        for s in self.specs:
            for axis, d in enumerate(s.dims):
                if d is None and s.fixed_shape is None:
                    key = f"?{s.name}:{axis}"
                    s.dims[axis] = key
                    self.dim_ranges.setdefault(key, BATCH_DIM_RANGE if axis == 0 else OTHER_DIM_RANGE)

    # -- dims ---------------------------------------------------------------------------
    def shapes_for(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        out = {}
        for s in self.specs:
            if s.fixed_shape is not None:
                out[s.name] = s.fixed_shape
            else:
                out[s.name] = tuple(d if isinstance(d, int) else dims[d] for d in s.dims)
        return out

    def elements(self, dims: dict[str, int]) -> int:
        # Python ints: 2**40-sized dims must not overflow into a small or negative count
        return sum(int(np.prod(shape, dtype=object)) for shape in self.shapes_for(dims).values())

    def min_dims(self) -> dict[str, int]:
        return {k: lo for k, (lo, _) in self.dim_ranges.items()}

    def raise_minimum(self, dims: dict[str, int]) -> None:
        """Make `dims` the new lower bounds (after probing found the minimum too small)."""
        for k, v in dims.items():
            lo, hi = self.dim_ranges[k]
            self.dim_ranges[k] = (max(lo, v), max(hi, v))

    def bound_size(self) -> None:
        """Lower the upper bounds of dims until the largest example fits max_elements."""
        for _ in range(64):
            big = {k: hi for k, (_, hi) in self.dim_ranges.items()}
            if self.elements(big) <= self.max_elements:
                return
            shrinkable = [(hi - lo, k) for k, (lo, hi) in self.dim_ranges.items() if hi > lo]
            if not shrinkable:
                return
            _, k = max(shrinkable)
            lo, hi = self.dim_ranges[k]
            self.dim_ranges[k] = (lo, max(lo, (lo + hi) // 2 if hi - lo > 1 else lo))

    # -- strategy -----------------------------------------------------------------------
    def strategy(self):
        """A hypothesis strategy over recipes (hypothesis is imported only when needed:
        to search and shrink after a failure)."""
        from hypothesis import strategies as st

        dim_names = sorted(self.dim_ranges)
        dims_st = st.fixed_dictionaries(
            {k: st.integers(*self.dim_ranges[k]) for k in dim_names})
        per_input = {}
        for s in self.specs:
            per_input[s.name] = st.tuples(st.sampled_from(self.kinds(s)), st.integers(0, 2**32 - 1))
        recipe = st.tuples(dims_st, st.fixed_dictionaries(per_input))
        return recipe.map(lambda r: Example(r[0], r[1], self))

    def kinds(self, s: InputSpec) -> tuple[str, ...]:
        if s.float_range is not None:
            return ("uniform", "low", "high")
        return {"float": FLOAT_KINDS, "int": INT_KINDS, "bool": BOOL_KINDS}[s.kind]

    def draw(self, n: int, seed: int) -> list["Example"]:
        """`n` examples drawn directly with a seeded generator (the same ones for the
        same space and seed, so a later check finds them in the runner's cache).

        The first is the simplest (every symbolic dim at its lower bound, the first value
        kind, seed 0: what probing already ran), the second has every dim at its upper
        bound, the rest are uniform over dims, value kinds and seeds. No hypothesis
        machinery on this path: it is only needed to shrink a failure."""
        rng = np.random.default_rng([seed, 0x6772617068])
        names = sorted(self.dim_ranges)
        out: list[Example] = []
        for i in range(n):
            if i == 0:
                dims = {k: self.dim_ranges[k][0] for k in names}
                recipe = {s.name: (self.kinds(s)[0], 0) for s in self.specs}
            else:
                dims = {k: (self.dim_ranges[k][1] if i == 1 else int(rng.integers(lo, hi + 1)))
                        for k in names for lo, hi in [self.dim_ranges[k]]}
                recipe = {s.name: (self.kinds(s)[int(rng.integers(len(self.kinds(s))))],
                                   int(rng.integers(0, 2**32))) for s in self.specs}
            out.append(Example(dims, recipe, self))
        return out

    def from_sample(self, sample: dict[str, np.ndarray]) -> "Example":
        feeds = {}
        for s in self.specs:
            if s.name not in sample:
                raise GraphoptError(f"sample lacks input '{s.name}'")
            if s.container.endswith("sequence") and isinstance(sample[s.name], (list, tuple)):
                feeds[s.name] = [np.asarray(v).astype(s.dtype, copy=False) for v in sample[s.name]]
                continue
            a = np.asarray(sample[s.name])
            if a.dtype != s.dtype:
                a = a.astype(s.dtype)
            if s.dims and isinstance(s.dims[0], int) and a.ndim == len(s.dims) and a.shape[0] > s.dims[0]:
                a = a[: s.dims[0]]
            feeds[s.name] = a
        return Example({}, {}, self, feeds=feeds, real=True)


class Example:
    """One drawn input: its recipe and (lazily) its arrays."""

    def __init__(self, dims: dict, recipe: dict, space: InputSpace, feeds: dict | None = None,
                 real: bool = False) -> None:
        self.dims = dims
        self.recipe = recipe
        self.space = space
        self.real = real
        self._feeds = feeds

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        if self._feeds is None:
            shapes = self.space.shapes_for(self.dims)
            self._feeds = {s.name: make_value(s, shapes[s.name], *self.recipe[s.name])
                           for s in self.space.specs}
        return self._feeds

    def describe(self) -> str:
        if self.real:
            return "real sample " + ", ".join(f"{k}{_shape_text(v)}" for k, v in self.feeds.items())
        return ", ".join(f"{k}{_shape_text(v)} {self.recipe[k][0]} seed={self.recipe[k][1]}"
                         for k, v in self.feeds.items())

    def same_as(self, other: "Example") -> bool:
        from .runner import _digest

        return _digest(self.feeds) == _digest(other.feeds)

    def __repr__(self) -> str:
        return f"Example({self.describe()})"


def _shape_text(v) -> str:
    if isinstance(v, (list, tuple)):
        return f"[sequence of {len(v)}" + (f" x {list(np.shape(v[0]))}" if v else "") + "]"
    return str(list(np.shape(v)))


def make_value(s: InputSpec, shape: tuple, kind: str, seed: int):
    """make_array, or for a sequence input a list of (seed % 3) such arrays (seed 0,
    the simplest, is the empty sequence)."""
    if s.container.endswith("sequence"):
        return [make_array(s, shape, kind, seed + 1 + k) for k in range(seed % 3)]
    return make_array(s, shape, kind, seed)


def make_array(s: InputSpec, shape: tuple, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if s.kind == "bool":
        # always an ndarray of the input's shape (a 0-d array for a rank-0 input):
        # onnxruntime refuses numpy.bool scalars
        if kind == "false":
            return np.zeros(shape, bool)
        if kind == "true":
            return np.ones(shape, bool)
        return np.asarray(rng.random(shape) < 0.5, dtype=bool).reshape(shape)
    if s.kind == "int":
        lo, hi = s.int_range or DEFAULT_INT_RANGE
        hi = max(hi, lo + 1)
        if kind == "low":
            return np.full(shape, lo, s.dtype)
        if kind == "high":
            return np.full(shape, hi - 1, s.dtype)
        return rng.integers(lo, hi, size=shape, dtype=np.int64).astype(s.dtype)
    if s.float_range is not None:
        lo, hi = s.float_range
        if kind == "low":
            a = np.full(shape, lo)
        elif kind == "high":
            a = np.full(shape, hi)
        else:
            a = rng.uniform(lo, hi, size=shape)
        return np.asarray(a).astype(s.dtype)
    if kind == "normal":
        a = rng.standard_normal(shape)
    elif kind == "uniform":
        a = rng.uniform(0.0, 1.0, size=shape)
    elif kind == "ones":
        a = np.ones(shape)
    elif kind == "zeros":
        a = np.zeros(shape)
    elif kind == "small":
        a = rng.standard_normal(shape) * 1e-3
    elif kind == "large":
        a = rng.standard_normal(shape) * 1e3
    elif kind == "negative":
        a = -np.abs(rng.standard_normal(shape))
    else:  # mixed magnitudes
        a = rng.standard_normal(shape) * np.exp(rng.uniform(-6, 6, size=shape))
    return np.asarray(a).astype(s.dtype)


def describe_feeds(feeds: dict[str, Any]) -> str:
    return ", ".join(f"{k}{list(np.shape(v))}" for k, v in feeds.items())
