"""External data: where a model's weights live outside its protobuf.

* Reading: every location is checked to lie inside the model's folder (an absolute or
  escaping location is refused, a known attack on ONNX loaders) and to hold as many bytes
  as its tensor needs.
* Keeping weights in their files (below): memory maps on load, stubs on export, and the
  data file written from the arrays on save.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import onnx

from .._proto import copy_fields
from ..errors import GraphoptError
from .tensors import (_SUBBYTE_TYPES, _fixed_nbytes, _raw_nbytes, iter_function_tensors, iter_model_tensors,
                      iter_sparse)


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
        _check_bounds(tensor, location, target)
        files.add(target)
    return files


def external_span(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length or None) of an external tensor."""
    info = {e.key: e.value for e in tensor.external_data}
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise GraphoptError(
            f"tensor '{tensor.name}': external data offset/length is not a number "
            f"(offset '{info.get('offset')}', length '{info.get('length')}')") from None
    if offset < 0 or (length is not None and length < 0):
        raise GraphoptError(f"tensor '{tensor.name}': negative external data offset or length")
    return info.get("location", ""), offset, length


def _check_bounds(tensor: onnx.TensorProto, location: str, target: Path) -> None:
    """The tensor's bytes lie inside its data file and are as many as its shape and type need."""
    _, offset, length = external_span(tensor)
    size = target.stat().st_size
    if offset > size or (offset == size and length):
        raise GraphoptError(
            f"external data of tensor '{tensor.name}' starts at byte {offset}, past the end of "
            f"'{location}' ({size} bytes)")
    if length is not None and offset + length > size:
        raise GraphoptError(
            f"external data of tensor '{tensor.name}' runs past the end of '{location}': "
            f"bytes {offset}..{offset + length} of a {size}-byte file")
    need = _fixed_nbytes(tensor)
    have = length if length is not None else size - offset
    if need is not None and have < need:
        raise GraphoptError(
            f"external data file '{location}' is too short for tensor '{tensor.name}': "
            f"{have} bytes from offset {offset}, its shape and type need {need}")
    if need is not None and length is not None and length != need:
        raise GraphoptError(
            f"external data of tensor '{tensor.name}' in '{location}' is {length} bytes, "
            f"its shape and type need {need}")


# -- weights kept in their files ---------------------------------------------------------
#
# A model with external data is not read into protobuf: `load_with_sources(lazy=True)`
# leaves its tensors external, and `map_external_data` gives each gs Constant a numpy
# array over a private (copy-on-write) memory map of the data file. Passes read and may
# even write those arrays like any other; only the pages they touch are read. For saving,
# `export_model` produces the ModelProto with every large array as a stub (an external
# reference to the array, not its bytes), and `save(..., arrays=...)` writes the arrays
# straight into the output, piece by piece. Peak memory is then about the weights read
# once (the file pages of the maps), not several protobuf copies of them.

_ARRAY_PREFIX = "graphopt-array:"
_STUB_MIN_BYTES = 1024  # constants from this size on are exported as stubs (save's threshold)


def _lazy_loadable(model: onnx.ModelProto) -> bool:
    """Every external tensor is a graph initializer or a tensor attribute (what gs imports
    as a Constant): sparse and function tensors are loaded into the model instead."""
    for sparse in iter_sparse(model.graph):
        if onnx.TensorProto.EXTERNAL in (sparse.values.data_location, sparse.indices.data_location):
            return False
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_function_tensors(model)):
        return False
    return np.little_endian


class _Maps:
    """One private memory map per external data file, opened on first use."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.maps: dict[str, mmap.mmap] = {}

    def view(self, tensor: onnx.TensorProto) -> np.ndarray | None:
        """The tensor's data as a writable array over the map (None: not a plain numeric type)."""
        if tensor.data_type in _SUBBYTE_TYPES or tensor.data_type in (
                onnx.TensorProto.STRING, onnx.TensorProto.BFLOAT16, onnx.TensorProto.UNDEFINED):
            return None
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError, ValueError):
            return None
        if dtype.kind not in "fiubc" or dtype.names:
            return None
        location, offset, _ = external_span(tensor)
        count = 1
        for d in tensor.dims:
            count *= d
        if count == 0:
            return np.zeros(tuple(tensor.dims), dtype)
        buf = self.maps.get(location)
        if buf is None:
            with open(self.base_dir / location, "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self.maps[location] = buf
        return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(tuple(tensor.dims))


def map_external_data(graph, base_dir: str | os.PathLike) -> int:
    """Give every Constant of a gs graph (and its subgraphs, tensor attributes included)
    that is still an external-data TensorProto an array over a memory map of its file.
    Others of an unusual type are loaded into their TensorProto. Returns how many were mapped."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from ..ir import iter_graphs

    maps = _Maps(Path(base_dir))
    mapped = 0
    seen: set[int] = set()
    for const in _iter_gs_constants(graph, gs, iter_graphs):
        if id(const) in seen or not isinstance(const._values, LazyValues):
            continue
        seen.add(id(const))
        proto = const._values.tensor
        if not isinstance(proto, onnx.TensorProto) or proto.data_location != onnx.TensorProto.EXTERNAL:
            continue
        arr = maps.view(proto)
        if arr is None:
            onnx.external_data_helper.load_external_data_for_tensor(proto, str(base_dir))
            proto.data_location = onnx.TensorProto.DEFAULT
            del proto.external_data[:]
            const.data_location = None
            continue
        const._values = arr
        const.data_location = None
        mapped += 1
    return mapped


def _iter_gs_constants(graph, gs, iter_graphs):
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant):
                yield t
        for node in g.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Constant):
                    yield value
                elif isinstance(value, (list, tuple)):
                    yield from (v for v in value if isinstance(v, gs.Constant))


def export_model(model) -> tuple[onnx.ModelProto, dict[str, np.ndarray | onnx.TensorProto]]:
    """`model.to_onnx()` (a graphopt.ir.Model) with every constant of at least 1 KiB, held
    as a numpy array or still as the input's TensorProto with raw_data, exported as a stub:
    an external-data tensor whose location names an entry of the returned dict (the array
    or the TensorProto). Only `save(proto, ..., arrays=...)` understands the stubs; no
    weight is copied. The model is left as it was."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from ..ir import iter_graphs

    arrays: dict[str, np.ndarray] = {}
    swapped: list[tuple] = []
    seen: set[int] = set()
    try:
        for const in _iter_gs_constants(model.graph, gs, iter_graphs):
            values = const._values
            if id(const) in seen:
                continue
            if isinstance(values, LazyValues):
                # still the input's TensorProto: stubbed too, and written from its raw_data
                # (to_onnx would copy it into the exported model first)
                seen.add(id(const))
                key = f"{_ARRAY_PREFIX}{len(arrays)}"
                stub = _proto_stub(values.tensor, const.name, key)
                if stub is not None:
                    arrays[key] = values.tensor
                    swapped.append((const, values, const.data_location))
                    const._values = LazyValues(stub)
                continue
            if not isinstance(values, np.ndarray) or values.nbytes < _STUB_MIN_BYTES:
                continue
            seen.add(id(const))
            if values.dtype.kind not in "fiubc" or values.dtype.names or not values.dtype.isnative:
                continue
            try:
                data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
                export = getattr(const, "export_dtype", None)
                if export is not None and dtype_to_onnx(export) != data_type:
                    continue  # gs converts it on export (float32 values of a bfloat16/float8 tensor)
            except (KeyError, TypeError, ValueError):
                continue
            key = f"{_ARRAY_PREFIX}{len(arrays)}"
            stub = onnx.TensorProto(name=const.name, data_type=data_type, dims=values.shape,
                                    data_location=onnx.TensorProto.EXTERNAL)
            for k, v in (("location", key), ("offset", "0"), ("length", str(values.nbytes))):
                stub.external_data.add(key=k, value=v)
            arrays[key] = values
            swapped.append((const, values, const.data_location))
            const._values = LazyValues(stub)
        proto = model.to_onnx()
    finally:
        for const, values, location in swapped:
            const._values = values
            const.data_location = location
    return proto, arrays


def _proto_stub(t, name: str, key: str) -> onnx.TensorProto | None:
    """A stub for a TensorProto with raw_data of at least 1 KiB (None for others)."""
    if not isinstance(t, onnx.TensorProto) or t.data_location == onnx.TensorProto.EXTERNAL \
            or not t.HasField("raw_data"):
        return None
    n = _fixed_nbytes(t)
    if n is None or n < _STUB_MIN_BYTES:
        return None
    stub = onnx.TensorProto()
    copy_fields(t, stub, skip=("raw_data", "external_data", "data_location"))
    stub.name = name
    stub.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", key), ("offset", "0"), ("length", str(n))):
        stub.external_data.add(key=k, value=v)
    return stub


def _source_nbytes(source) -> int:
    return source.nbytes if isinstance(source, np.ndarray) else _fixed_nbytes(source)


def _stub_key(t: onnx.TensorProto, arrays: dict | None) -> str | None:
    if not arrays or t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    for e in t.external_data:
        if e.key == "location":
            return e.value if e.value in arrays else None
    return None


def _materialize(t: onnx.TensorProto, source) -> None:
    """Turn a stub into an ordinary tensor with its bytes in raw_data."""
    del t.external_data[:]
    t.ClearField("data_location")
    t.raw_data = np.ascontiguousarray(source).tobytes() if isinstance(source, np.ndarray) else source.raw_data


def _write_array(f, arr: np.ndarray, chunk: int = 64 << 20) -> int:
    """Write an array's bytes in pieces (no full copy); returns the bytes written."""
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, chunk):
        f.write(memoryview(flat[start:start + chunk]))
    return flat.size


_ALIGN = 4096


def _write_external(model: onnx.ModelProto, arrays: dict, data_path: Path, data_name: str) -> None:
    """Move every tensor of at least 1 KiB into the data file: stubs from their arrays,
    the others from their raw_data (which is then cleared)."""
    with open(data_path, "wb") as f:
        for t in iter_model_tensors(model):
            key = _stub_key(t, arrays)
            if key is not None:
                source = arrays[key]
            elif (t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data")
                  and _raw_nbytes(t) >= _STUB_MIN_BYTES):
                source = t.raw_data
            else:
                continue
            offset = f.tell()
            if offset % _ALIGN:
                f.write(b"\0" * (_ALIGN - offset % _ALIGN))
                offset = f.tell()
            if isinstance(source, onnx.TensorProto):
                source = source.raw_data
            length = _write_array(f, source) if isinstance(source, np.ndarray) else f.write(source)
            del source
            t.ClearField("raw_data")
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=k, value=v)
