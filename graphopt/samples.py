"""Real input samples: folders of .npz files keyed by graph input name.

Samples are loaded here and validated here, in one place, before anything runs
(`prepare_samples`): the embedding API and every command go through it, so a
verification thread or a lossy pass never sees a sample the model cannot take.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

from .errors import GraphoptError

log = logging.getLogger(__name__)


class Sample(dict):
    """One sample, {input name: array}, remembering the file it came from."""

    source: str = ""

    def describe(self, index: int) -> str:
        return f"sample {index} ({self.source})" if self.source else f"sample {index}"


def load_samples(path: str | Path, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Load samples from a folder of .npz files (or one .npz file).

    Each .npz holds one array per graph input. An array whose first dimension is larger
    than the model's batch is fine: it is one sample. Files are read in name order.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise GraphoptError(f"{path}: no .npz files in samples folder")
    elif path.is_file():
        files = [path]
    else:
        raise GraphoptError(f"{path}: samples path not found")
    samples = []
    for f in files[:limit] if limit else files:
        try:
            with np.load(f, allow_pickle=False) as data:
                sample = Sample((k, data[k]) for k in data.files)
        except (OSError, ValueError, EOFError) as e:
            raise GraphoptError(f"{f}: not a readable .npz file ({e})") from e
        except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile and friends
            raise GraphoptError(f"{f}: not a readable .npz file ({type(e).__name__})") from e
        sample.source = f.name
        samples.append(sample)
    return samples


def check_samples(samples: list[dict[str, np.ndarray]], input_names: list[str]) -> None:
    """Every sample provides every named input (arrays for other names are allowed)."""
    wanted = set(input_names)
    for i, sample in enumerate(samples):
        missing = wanted - set(sample)
        if missing:
            raise GraphoptError(f"{_describe(sample, i)} lacks input(s) {', '.join(sorted(missing))}")


def _describe(sample: Any, i: int) -> str:
    return sample.describe(i) if isinstance(sample, Sample) else f"sample {i}"


def _kind(dtype: np.dtype) -> str:
    """'f' float, 'i' integer (signed or not), 'b' bool, else the numpy kind."""
    if dtype.kind in "iu":
        return "i"
    return dtype.kind


def _input_signature(graph: onnx.GraphProto) -> list[tuple[str, np.dtype | None, list | None, bool]]:
    """(name, numpy dtype, dims (int or None per axis) or None, required) of each graph
    input; inputs with an initializer (an overridable default) are not required."""
    inits = {t.name for t in graph.initializer}
    out = []
    for vi in graph.input:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        dtype = dims = None
        if tt is not None and tt.elem_type:
            try:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            except (KeyError, TypeError, ValueError):
                dtype = None
        if tt is not None and tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out.append((vi.name, dtype, dims, vi.name not in inits))
    return out


def prepare_samples(
    samples: Iterable[dict[str, Any]] | str | Path | None, model: onnx.ModelProto | onnx.GraphProto,
) -> list[dict[str, np.ndarray]] | None:
    """Validate samples against the model's inputs and return them ready to feed.

    `samples` is a list of {input name: array}, or a path (a folder of .npz files or
    one .npz). Per sample and input: the array must be there (unless the input has an
    initializer default), have the input's rank and its static dims beyond the first
    (the batch axis may differ), and the input's kind of type: a float array for a float
    input (another float width is cast, with a note), an integer array for an integer
    input (cast when every value fits), bool for bool. Arrays that are no model input
    (a `label` kept beside the inputs) are dropped with a note. Raises GraphoptError
    naming the sample and the input otherwise.
    """
    if samples is None:
        return None
    if isinstance(samples, (str, Path)):
        samples = load_samples(samples)
    samples = list(samples)
    if not samples:
        return None
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    signature = _input_signature(graph)
    names = [s[0] for s in signature]
    notes: dict[str, set[str]] = {}
    out: list[dict[str, np.ndarray]] = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise GraphoptError(f"sample {i} is a {type(sample).__name__}, expected {{input name: array}}")
        what = _describe(sample, i)
        extra = sorted(set(sample) - set(names))
        if extra:
            notes.setdefault("ignored", set()).update(extra)
        missing = [n for n, _, _, required in signature if required and n not in sample]
        if missing:
            have = ", ".join(sorted(map(str, sample))) or "nothing"
            raise GraphoptError(
                f"{what} has no array for model input(s) {', '.join(missing)} (it has: {have})")
        fed = Sample()
        fed.source = getattr(sample, "source", "")
        for name, dtype, dims, _ in signature:
            if name not in sample:
                continue
            fed[name] = _check_array(what, name, sample[name], dtype, dims, notes)
        out.append(fed)
    if notes.get("ignored"):
        log.warning("samples: ignoring array(s) %s: not inputs of the model (inputs: %s)",
                    ", ".join(sorted(notes["ignored"])), ", ".join(names))
    for key, text in notes.items():
        if key != "ignored":
            log.warning("samples: %s", text)
    return out


def fit_samples(samples: list[dict[str, np.ndarray]] | None,
                shapes: dict[str, tuple]) -> list[dict[str, np.ndarray]] | None:
    """Samples for a model whose inputs were bound to the static `shapes` (compile binds
    a symbolic batch to 1): a sample whose leading axis holds more rows than the bound
    batch is cut into consecutive samples of that batch (a remainder is dropped). Other
    axes must match the bound shape: GraphoptError naming the sample and input if not."""
    if not samples:
        return samples
    out: list[dict[str, np.ndarray]] = []
    for i, sample in enumerate(samples):
        what = _describe(sample, i)
        pieces = None
        for name, arr in sample.items():
            shape = shapes.get(name)
            if shape is None:
                continue
            if arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:]) \
                    or (arr.ndim and arr.shape[0] < shape[0]):
                raise GraphoptError(
                    f"{what}: input '{name}' has shape {list(arr.shape)}, the model is built for "
                    f"{list(shape)} (give --input-shape {name}=" + "x".join(map(str, arr.shape)) + ")")
            n = arr.shape[0] // shape[0] if arr.ndim and shape[0] else 1
            pieces = n if pieces is None else min(pieces, n)
        for k in range(pieces or 1):
            piece = Sample()
            piece.source = getattr(sample, "source", "")
            for name, arr in sample.items():
                shape = shapes.get(name)
                if shape is not None and arr.ndim and shape[0] and arr.shape[0] != shape[0]:
                    arr = arr[k * shape[0]:(k + 1) * shape[0]]
                piece[name] = arr
            out.append(piece)
    return out


def _check_array(what: str, name: str, value: Any, dtype: np.dtype | None, dims: list | None,
                 notes: dict) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise GraphoptError(f"{what}: input '{name}' is not an array ({type(value).__name__})") from e
    if arr.dtype.kind in "OUSV":
        raise GraphoptError(f"{what}: input '{name}' holds {arr.dtype} data, not numbers")
    if dims is not None:
        if arr.ndim != len(dims):
            raise GraphoptError(
                f"{what}: input '{name}' has rank {arr.ndim} (shape {list(arr.shape)}), "
                f"the model expects rank {len(dims)} ({_dims_text(dims)})")
        for axis, (got, want) in enumerate(zip(arr.shape, dims)):
            if axis > 0 and want and got != want:
                raise GraphoptError(
                    f"{what}: input '{name}' has shape {list(arr.shape)}, the model expects "
                    f"{_dims_text(dims)} (axis {axis}: {got} != {want})")
    if dtype is None or arr.dtype == dtype:
        return arr
    got, want = _kind(arr.dtype), _kind(dtype)
    if got != want:
        raise GraphoptError(
            f"{what}: input '{name}' is {arr.dtype}, the model expects {dtype} "
            f"(convert the samples; {_kind_name(got)} data is not cast to {_kind_name(want)})")
    if want == "i":
        cast = arr.astype(dtype)
        if not np.array_equal(cast.astype(arr.dtype), arr):
            raise GraphoptError(
                f"{what}: input '{name}' is {arr.dtype} with values that do not fit the model's {dtype}")
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(dtype)
        if want == "f" and not np.isfinite(cast[np.isfinite(arr)]).all():
            raise GraphoptError(
                f"{what}: input '{name}' is {arr.dtype} with values out of the range of the model's {dtype}")
    notes[f"cast {name}"] = f"input '{name}' given as {arr.dtype}, cast to the model's {dtype}"
    return cast


def _kind_name(kind: str) -> str:
    return {"f": "float", "i": "integer", "b": "bool", "c": "complex"}.get(kind, kind)


def _dims_text(dims: list) -> str:
    return "[" + ", ".join("?" if d is None or d == 0 else str(d) for d in dims) + "]"
