"""Loading and saving ONNX models safely.

* External data is resolved relative to the model's folder; a location that is
  absolute or escapes that folder is refused (a known attack on ONNX loaders).
* Output is written atomically: everything goes to a temporary folder next to the
  destination and is renamed into place only when complete.
* Models whose weights do not fit in one protobuf (2 GB) are written with external
  data automatically.
* Large models are cheap to move through: the input is memory-mapped and parsed (not
  read into a bytes object first), and the output is encoded and written piece by piece
  (`write_model`) instead of through one SerializeToString of the whole model; the
  written bytes are identical to SerializeToString's.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ._proto import copy_field, copy_fields
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


def _fixed_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes of a tensor's data from its shape and type; None for types without a fixed size
    (strings) or that pack several elements per byte (4-bit and 2-bit types)."""
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        if t.data_type in _SUBBYTE_TYPES:
            return None
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    n = itemsize
    for d in t.dims:
        n *= d
    return n


_SUBBYTE_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                  if hasattr(onnx.TensorProto, n)}


def load(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a file, with its external data, refusing unsafe locations."""
    return load_with_sources(path, load_external_data=load_external_data)[0]


def load_with_sources(
    path: str | os.PathLike, *, load_external_data: bool = True, lazy: bool = False,
) -> tuple[onnx.ModelProto, set[Path]]:
    """Like `load`, also returning every file the model was read from (itself and its data).
    With `lazy`, external data is checked but left in its files when `map_external_data`
    can map it (initializers and tensor attributes of a numeric type): the caller imports
    the model and calls map_external_data(graph, path's folder)."""
    path = Path(path)
    if not path.exists():
        raise GraphoptError(f"{path}: no such file")
    if path.is_dir():
        raise GraphoptError(f"{path}: is a directory, expected an .onnx file")
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            _parse_file(f, model, path)
    except OSError as e:
        raise GraphoptError(f"{path}: cannot read: {e.strerror}") from e
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise GraphoptError(f"{path}: not an ONNX model (no graph)")
    if not model.opset_import and model.ir_version >= 3:
        raise GraphoptError(f"{path}: not a valid ONNX model (no opset import)")
    base_dir = path.parent
    files = external_files(model, base_dir)
    if files and load_external_data and not (lazy and _lazy_loadable(model)):
        onnx.external_data_helper.load_external_data_for_model(model, str(base_dir))
    return model, {path.resolve(), *files}


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
    for sparse in _iter_sparse(model.graph):
        if onnx.TensorProto.EXTERNAL in (sparse.values.data_location, sparse.indices.data_location):
            return False
    for func in model.functions:
        for node in func.node:
            for attr in node.attribute:
                for t in [attr.t] * attr.HasField("t") + list(attr.tensors):
                    if t.data_location == onnx.TensorProto.EXTERNAL:
                        return False
    return np.little_endian


def _iter_sparse(graph: onnx.GraphProto):
    yield from graph.sparse_initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor
            yield from attr.sparse_tensors
            if attr.HasField("g"):
                yield from _iter_sparse(attr.g)
            for g in attr.graphs:
                yield from _iter_sparse(g)


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

    from .ir import iter_graphs

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

    from .ir import iter_graphs

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


def _parse_file(f, model: onnx.ModelProto, path: Path) -> None:
    """Parse an open model file into `model`. The file is memory-mapped rather than read
    (protobuf copies what it keeps either way; reading first would copy the whole file
    into a bytes object too, which costs as much as parsing on large models)."""
    data = None
    try:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty file, pipe, or a file system without mmap
        buf = None
        data = f.read()
    try:
        if buf is None and not data:
            raise GraphoptError(f"{path}: empty file, not an ONNX model")
        with memoryview(buf if buf is not None else data) as view:
            try:
                if buf is None or len(view) < _CHUNK_BYTES or not _parse_in_chunks(view, model, buf):
                    model.Clear()
                    model.ParseFromString(view)
            except (DecodeError, RuntimeError, ValueError, TypeError) as e:
                raise GraphoptError(f"{path}: not a valid ONNX model (truncated or not protobuf)") from e
    finally:
        if buf is not None:
            buf.close()


# A large model is parsed in pieces of whole fields (a protobuf message is the
# concatenation of its fields, and parsing is merging them one after another), and the
# pages of the map already parsed are dropped as it goes: the file and its parsed copy
# are then not both resident at once, which for a model of 1.5 GB held inline is the
# difference between a peak of 2x and 1x its size.
_CHUNK_BYTES = 64 << 20
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number


def _read_varint(view, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(view, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start of the field's key, start of a length-delimited value, end of the
    field) for each field of the message encoded in view[pos:end]. Raises ValueError on a
    malformed encoding (and on groups, which ONNX does not use)."""
    while pos < end:
        start = pos
        key, pos = _read_varint(view, pos, end)
        number, wire = key >> 3, key & 7
        value = pos
        if wire == 0:
            _, pos = _read_varint(view, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, value = _read_varint(view, pos, end)
            pos = value + n
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end or number == 0:
            raise ValueError("field past the end")
        yield number, start, value if wire == 2 else -1, pos


def _parse_in_chunks(view, model: onnx.ModelProto, buf: mmap.mmap) -> bool:
    """Parse `view` into `model` in chunks of whole fields, dropping parsed pages of the
    map `buf`. False (model left to the caller to clear) when the encoding is not one
    this walker follows; the plain parse then decides."""
    dropped = 0
    page = mmap.PAGESIZE

    def release(upto: int) -> None:
        nonlocal dropped
        upto -= upto % page
        if upto - dropped >= _CHUNK_BYTES and hasattr(buf, "madvise"):
            try:
                buf.madvise(mmap.MADV_DONTNEED, dropped, upto - dropped)
            except (OSError, ValueError):
                pass
            dropped = upto

    try:
        for number, start, value, end in list(_fields(view, 0, len(view))):
            if number != _GRAPH_FIELD or value < 0:
                model.MergeFromString(view[start:end])
                continue
            # the graph: merge runs of its fields of about _CHUNK_BYTES each
            graph = model.graph
            run_start = value
            for _, fstart, _, fend in _fields(view, value, end):
                if fend - run_start >= _CHUNK_BYTES:
                    graph.MergeFromString(view[run_start:fend])
                    run_start = fend
                    release(fend)
            if run_start < end:
                graph.MergeFromString(view[run_start:end])
            release(end)
    except ValueError:
        return False
    return True


_STANDARD_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}


def check_ops(model: onnx.ModelProto) -> None:
    """Refuse nodes of a standard ONNX domain (the default one, ai.onnx.ml) whose op has no
    schema at the opset the model imports: no runtime can load them, and passes cannot
    know what they compute. Custom domains and model-local functions are allowed."""
    from onnx import defs

    opsets = {}
    for imp in model.opset_import:
        domain = _STANDARD_DOMAINS.get(imp.domain)
        if domain is not None:
            opsets[domain] = imp.version
    local = {(f.domain, f.name) for f in model.functions}
    from .ir import iter_proto_nodes

    nodes = list(iter_proto_nodes(model.graph))
    for func in model.functions:
        nodes.extend(func.node)
    checked: set[tuple[str, str]] = set()
    for node in nodes:
        domain = _STANDARD_DOMAINS.get(node.domain)
        if domain is None or (node.domain, node.op_type) in local or (domain, node.op_type) in checked:
            continue
        checked.add((domain, node.op_type))
        where = f"node '{node.name}'" if node.name else f"an unnamed node (output '{next(iter(node.output), '')}')"
        shown = f"domain '{domain}'" if domain else "the default ONNX domain"
        if not defs.has(node.op_type, domain):
            raise GraphoptError(f"unknown op '{node.op_type}' in {shown} ({where}); "
                                "use a custom domain for custom ops")
        version = opsets.get(domain)
        if version is None:
            raise GraphoptError(f"op '{node.op_type}' ({where}) is in {shown}, which the model "
                                "does not import (no opset_import entry)")
        try:
            defs.get_schema(node.op_type, version, domain)
        except defs.SchemaError:
            first = min(s.since_version for s in defs.get_all_schemas_with_history()
                        if s.name == node.op_type and s.domain == domain)
            raise GraphoptError(f"op '{node.op_type}' ({where}) exists from opset {first} of {shown} "
                                f"on, but the model imports opset {version}") from None


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
        if directory.exists():
            raise GraphoptError(f"{path}: '{directory}' is not a folder")
        raise GraphoptError(f"{path}: output folder '{directory}' does not exist")
    if path.is_dir():
        raise GraphoptError(f"{path}: is a directory, expected an output file name")
    protected = {Path(p).resolve() for p in protect}
    targets = [path] + ([directory / (path.name + ".data")] if external_data else [])
    for target in targets:
        if target.resolve() in protected:
            raise GraphoptError(f"refusing to overwrite the input file '{target}' (use --in-place)")
    # A permission check (os.access) says yes to root on a read-only mount and on /proc:
    # make and remove the temporary folder `save` will write into.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".graphopt-", dir=directory))
    except OSError as e:
        raise GraphoptError(f"{path}: cannot write to output folder '{directory}': "
                            f"{e.strerror or e}") from e


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Raise GraphoptError unless `folder` is, or can be created as, a folder we may write
    in (checked by making and removing a temporary folder in its nearest existing
    ancestor). For destinations written during or after the work (dumps, reports,
    reproducers), so that they fail before it. `what` names the option in the message."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise GraphoptError(f"{what} '{folder}': '{probe}' is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".graphopt-", dir=probe))
    except OSError as e:
        raise GraphoptError(f"{what} '{folder}': cannot write in '{probe}': {e.strerror or e}") from e


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    protect: tuple[str | os.PathLike, ...] = (),
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a model atomically.

    external_data: True/False forces the format; None (default) uses external data only
    when the model would not fit in one protobuf. The data file is `<name>.data` beside
    the model. Files in `protect` (the input model and its data) are never overwritten.
    arrays: the weights of a model from `export_model`, whose stubs are written from
    these arrays piece by piece (that model's tensors are then rewritten to point at
    the output; without `arrays` the caller's model is left unchanged).
    Returns the written path.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        check_destination(path, protect=protect)
        in_arrays = sum(_source_nbytes(a) for a in arrays.values()) if arrays else 0
        external_data = model_byte_size(model) + in_arrays > EXTERNAL_DATA_THRESHOLD
    check_destination(path, external_data=external_data, protect=protect)
    data_name = path.name + ".data"

    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=directory))
    except OSError as e:
        raise GraphoptError(f"{path}: cannot write to output folder '{directory}': "
                            f"{e.strerror or e}") from e
    try:
        tmp_model = tmpdir / path.name
        if arrays:
            if external_data:
                _write_external(model, arrays, tmpdir / data_name, data_name)
            else:
                # write_model streams the main graph's initializers from their arrays;
                # stubs anywhere else (subgraphs, attributes) are filled in first
                mains = list(model.graph.initializer)  # kept alive: their ids stay valid
                main_ids = {id(t) for t in mains}
                for t in iter_model_tensors(model):
                    key = _stub_key(t, arrays)
                    if key is not None and id(t) not in main_ids:
                        _materialize(t, arrays[key])
                del mains
            with open(tmp_model, "wb") as f:
                write_model(model, f, arrays=None if external_data else arrays)
        elif external_data:
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
                write_model(model, f)
        if external_data and (tmpdir / data_name).exists():
            os.replace(tmpdir / data_name, directory / data_name)
        os.replace(tmp_model, path)
    except OSError as e:
        raise GraphoptError(f"{path}: cannot write: {e.strerror}") from e
    except ValueError as e:  # protobuf size errors
        raise GraphoptError(f"{path}: cannot serialize model: {e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


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


# -- streamed serialization -------------------------------------------------------------
#
# `model.SerializeToString()` encodes the whole model into one growing buffer and copies
# it into a bytes object: for a model of hundreds of MB that costs more than reading and
# parsing it. Protobuf's wire format is a concatenation of field encodings, so the same
# bytes can be produced piece by piece: the small fields of ModelProto and GraphProto
# through small messages, and every node and initializer on its own, each written as
# soon as it is encoded. Fields are emitted in field-number order, which is the order
# SerializeToString uses, so the file is byte-identical to it.

# Repeated message fields written element by element, and singular message fields
# written as their own pieces (recursively), by (message type, field name).
_STREAM_REPEATED = {("onnx.GraphProto", "node"), ("onnx.GraphProto", "initializer")}
_STREAM_SINGULAR = {("onnx.ModelProto", "graph")}
_KEEP_BYTES = 1 << 20  # elements up to this size are kept encoded between the two passes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int) -> bytes:
    return _varint((number << 3) | 2)  # wire type 2: length-delimited


class _Deferred:
    """A large element: its encoded length is known; it is encoded again when written."""

    __slots__ = ("message", "size")

    def __init__(self, message, size: int) -> None:
        self.message = message
        self.size = size


class _RawTensor:
    """A large initializer written as its fields before raw_data, then raw_data read
    straight from the message (one copy, instead of encoding the tensor into a buffer
    and copying that into a bytes object), then its fields after raw_data."""

    __slots__ = ("after", "array", "before", "nbytes", "size", "tensor")

    def __init__(self, tensor: onnx.TensorProto, before: bytes, after: bytes, nbytes: int,
                 array: np.ndarray | None = None) -> None:
        self.tensor, self.before, self.after, self.nbytes = tensor, before, after, nbytes
        self.array = array  # a stub's weights (see export_model): written from here
        self.size = len(before) + len(_RAW_KEY) + len(_varint(nbytes)) + nbytes + len(after)


class _SizeMismatch(Exception):
    """A tensor's raw_data is not as long as its shape and type say: encode it plainly."""


_RAW_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_RAW_KEY = _key(_RAW_FIELD)


_EXTERNAL_FIELDS = {onnx.TensorProto.DESCRIPTOR.fields_by_name[n].number
                    for n in ("external_data", "data_location")}


def _stub_piece(t: onnx.TensorProto, arr: np.ndarray) -> _RawTensor:
    """A stub written as the tensor it stands for: its fields with raw_data = the array's bytes."""
    before, after = onnx.TensorProto(), onnx.TensorProto()
    for fd, value in t.ListFields():
        if fd.number == _RAW_FIELD or fd.number in _EXTERNAL_FIELDS:
            continue
        copy_field(before if fd.number < _RAW_FIELD else after, fd, value)
    return _RawTensor(t, before.SerializeToString(), after.SerializeToString(), _source_nbytes(arr), arr)


def _raw_piece(t: onnx.TensorProto, arrays: dict | None = None) -> _RawTensor | None:
    key = _stub_key(t, arrays)
    if key is not None:
        return _stub_piece(t, arrays[key])
    if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data"):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    n = itemsize
    for d in t.dims:
        n *= d
    if not itemsize or n <= _KEEP_BYTES or _has_unknown_fields(t):
        return None
    before, after = onnx.TensorProto(), onnx.TensorProto()
    for fd, value in t.ListFields():
        if fd.number == _RAW_FIELD:
            continue
        copy_field(before if fd.number < _RAW_FIELD else after, fd, value)
    return _RawTensor(t, before.SerializeToString(), after.SerializeToString(), n)


def _has_unknown_fields(msg) -> bool:
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet

        return len(UnknownFieldSet(msg)) > 0
    except Exception:  # noqa: BLE001 - an older protobuf: assume none
        return False


def _plan(msg, arrays: dict | None = None) -> tuple[list, int]:
    """The pieces (bytes or _Deferred) whose concatenation is msg's encoding, and its length."""
    pieces: list = []
    total = 0
    small = None
    name = msg.DESCRIPTOR.full_name

    def flush() -> None:
        nonlocal small, total
        if small is not None:
            data = small.SerializeToString()
            pieces.append(data)
            total += len(data)
            small = None

    for fd, value in sorted(msg.ListFields(), key=lambda fv: fv[0].number):
        key = (name, fd.name)
        if key in _STREAM_SINGULAR:
            flush()
            sub, n = _plan(value, arrays)
            head = _key(fd.number) + _varint(n)
            pieces.append(head)
            pieces.extend(sub)
            total += len(head) + n
        elif key in _STREAM_REPEATED:
            flush()
            for elem in value:
                raw = _raw_piece(elem, arrays) if fd.name == "initializer" else None
                if raw is not None:
                    head = _key(fd.number) + _varint(raw.size)
                    pieces.append(head)
                    pieces.append(raw)
                    total += len(head) + raw.size
                    continue
                data = elem.SerializeToString()
                head = _key(fd.number) + _varint(len(data))
                if len(data) > _KEEP_BYTES:
                    pieces.append(head)
                    pieces.append(_Deferred(elem, len(data)))
                else:
                    pieces.append(head + data)
                total += len(head) + len(data)
        else:
            if small is None:
                small = type(msg)()
            target = getattr(small, fd.name)
            repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
            if repeated:
                target.extend(value)
            elif fd.message_type is not None:
                target.CopyFrom(value)
            else:
                setattr(small, fd.name, value)
    flush()
    return pieces, total


def write_model(model: onnx.ModelProto, f, arrays: dict[str, np.ndarray] | None = None) -> int:
    """Write `model`'s protobuf encoding to the binary file `f` without building the whole
    encoding in memory (see above); the bytes equal model.SerializeToString(). With
    `arrays` (see export_model), stubs among the main graph's initializers are written as
    the tensors they stand for, their raw data straight from the arrays. Raises
    ValueError when the model is over protobuf's 2 GB limit. Returns the bytes written."""
    if _has_unknown_fields(model) or _has_unknown_fields(model.graph):
        _materialize_all(model, arrays)
        data = model.SerializeToString()
        f.write(data)
        return len(data)
    pieces, total = _plan(model, arrays)
    if total > PROTOBUF_LIMIT:
        raise ValueError(f"Message onnx.ModelProto exceeds maximum protobuf size of 2GB: {total}")
    start = f.tell()
    try:
        _write_pieces(pieces, f)
    except _SizeMismatch:
        # a raw_data length that disagrees with its tensor's shape: encode the model plainly
        f.seek(start)
        f.truncate()
        _materialize_all(model, arrays)
        data = model.SerializeToString()
        f.write(data)
        return len(data)
    return total


def _materialize_all(model: onnx.ModelProto, arrays: dict | None) -> None:
    for t in iter_model_tensors(model):
        key = _stub_key(t, arrays)
        if key is not None:
            _materialize(t, arrays[key])


def _write_pieces(pieces: list, f) -> None:
    for piece in pieces:
        if isinstance(piece, _RawTensor) and isinstance(piece.array, onnx.TensorProto):
            raw = piece.array.raw_data
            if len(raw) != piece.nbytes:
                raise _SizeMismatch
            f.write(piece.before)
            f.write(_RAW_KEY + _varint(len(raw)))
            f.write(raw)
            del raw
            f.write(piece.after)
        elif isinstance(piece, _RawTensor) and piece.array is not None:
            f.write(piece.before)
            f.write(_RAW_KEY + _varint(piece.nbytes))
            _write_array(f, piece.array)
            f.write(piece.after)
        elif isinstance(piece, _RawTensor):
            raw = piece.tensor.raw_data
            if len(raw) != piece.nbytes:
                raise _SizeMismatch
            f.write(piece.before)
            f.write(_RAW_KEY + _varint(len(raw)))
            f.write(raw)
            del raw
            f.write(piece.after)
        elif isinstance(piece, _Deferred):
            data = piece.message.SerializeToString()
            if len(data) != piece.size:  # pragma: no cover - protobuf encodings are deterministic
                raise ValueError(f"tensor '{piece.message.name}' changed while being written")
            f.write(data)
            del data
        else:
            f.write(piece)
