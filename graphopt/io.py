"""Loading and saving ONNX models safely.

* External data is resolved relative to the model's folder; a location that is
  absolute or escapes that folder is refused (a known attack on ONNX loaders).
* Output is written atomically: everything goes to a temporary folder next to the
  destination and is renamed into place only when complete.
* Models whose weights do not fit in one protobuf (2 GB) are written with external
  data automatically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError

from .errors import GraphoptError

log = logging.getLogger(__name__)

# Protobuf refuses to serialize messages of 2 GiB or more; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in a graph and its subgraphs: initializers and tensor attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for g in attr.graphs:
                yield from iter_tensors(g)


def iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from iter_tensors(model.graph)
    for func in model.functions:
        for node in func.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def _external_location(tensor: onnx.TensorProto) -> str | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    raise GraphoptError(f"tensor '{tensor.name}' is marked external but has no data location")


def external_files(model: onnx.ModelProto, base_dir: Path) -> set[Path]:
    """The external data files a model refers to, each checked to lie inside base_dir."""
    base = base_dir.resolve()
    files: set[Path] = set()
    for tensor in iter_model_tensors(model):
        location = _external_location(tensor)
        if location is None:
            continue
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
            raise GraphoptError(
                f"refusing external data for tensor '{tensor.name}': absolute location '{location}'"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise GraphoptError(
                f"refusing external data for tensor '{tensor.name}': "
                f"location '{location}' escapes the model's folder"
            )
        if not target.is_file():
            raise GraphoptError(
                f"external data file '{location}' for tensor '{tensor.name}' not found next to the model"
            )
        files.add(target)
    return files


def load(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a file, with its external data, refusing unsafe locations."""
    return load_with_sources(path, load_external_data=load_external_data)[0]


def load_with_sources(
    path: str | os.PathLike, *, load_external_data: bool = True
) -> tuple[onnx.ModelProto, set[Path]]:
    """Like `load`, also returning every file the model was read from (itself and its data)."""
    path = Path(path)
    if not path.exists():
        raise GraphoptError(f"{path}: no such file")
    if path.is_dir():
        raise GraphoptError(f"{path}: is a directory, expected an .onnx file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise GraphoptError(f"{path}: cannot read: {e.strerror}") from e
    if not data:
        raise GraphoptError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise GraphoptError(f"{path}: not a valid ONNX model (truncated or not protobuf)") from e
    del data
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise GraphoptError(f"{path}: not an ONNX model (no graph)")
    if not model.opset_import and model.ir_version >= 3:
        raise GraphoptError(f"{path}: not a valid ONNX model (no opset import)")
    base_dir = path.parent
    files = external_files(model, base_dir)
    if files and load_external_data:
        onnx.external_data_helper.load_external_data_for_model(model, str(base_dir))
    return model, {path.resolve(), *files}


def model_byte_size(model: onnx.ModelProto) -> int:
    """Approximate serialized size, without serializing: tensor payloads plus a margin."""
    total = 0
    for t in iter_model_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        total += _raw_nbytes(t) if t.HasField("raw_data") else t.ByteSize()
    return total


def _raw_nbytes(t: onnx.TensorProto) -> int:
    """Size of a tensor's raw_data from its shape and type, without copying the bytes
    out of the message (reading `raw_data` copies it); exact for fixed-size types."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * itemsize if itemsize else len(t.raw_data)


def check_destination(
    path: str | os.PathLike, *, external_data: bool | None = False,
    protect: tuple[str | os.PathLike, ...] = (),
) -> None:
    """Raise GraphoptError unless `path` can be written by `save`: its folder exists and
    neither it nor (with external_data) its data file is one of the `protect`ed files.
    Callers run it before any work so a bad destination fails fast."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise GraphoptError(f"{path}: output folder '{directory}' does not exist")
    if path.is_dir():
        raise GraphoptError(f"{path}: is a directory, expected an output file name")
    protected = {Path(p).resolve() for p in protect}
    targets = [path] + ([directory / (path.name + ".data")] if external_data else [])
    for target in targets:
        if target.resolve() in protected:
            raise GraphoptError(f"refusing to overwrite the input file '{target}' (use --in-place)")


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    protect: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Write a model atomically.

    external_data: True/False forces the format; None (default) uses external data only
    when the model would not fit in one protobuf. The data file is `<name>.data` beside
    the model. Files in `protect` (the input model and its data) are never overwritten.
    Returns the written path.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        check_destination(path, protect=protect)
        external_data = model_byte_size(model) > EXTERNAL_DATA_THRESHOLD
    check_destination(path, external_data=external_data, protect=protect)
    data_name = path.name + ".data"

    tmpdir = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=directory))
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            # save_model moved the payloads out of `model`; bring them back so the
            # caller's object is unchanged.
            onnx.external_data_helper.load_external_data_for_model(model, str(tmpdir))
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
        if external_data:
            os.replace(tmpdir / data_name, directory / data_name)
        os.replace(tmp_model, path)
    except OSError as e:
        raise GraphoptError(f"{path}: cannot write: {e.strerror}") from e
    except ValueError as e:  # protobuf size errors
        raise GraphoptError(f"{path}: cannot serialize model: {e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
