"""The protobuf wire format, for models too large to go through one bytes object:
parsing a memory-mapped file in chunks of whole fields, and writing a model piece by
piece with bytes identical to SerializeToString's."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .._proto import copy_field
from ..errors import GraphoptError
from .external import _materialize, _source_nbytes, _stub_key, _write_array
from .tensors import iter_model_tensors

# Protobuf refuses to serialize messages of 2 GiB or more; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 1


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
                 array: np.ndarray | onnx.TensorProto | None = None) -> None:
        self.tensor, self.before, self.after, self.nbytes = tensor, before, after, nbytes
        self.array = array  # a stub's weights (see export_model: an array or a TensorProto): written from here
        self.size = len(before) + len(_RAW_KEY) + len(_varint(nbytes)) + nbytes + len(after)


class _SizeMismatch(Exception):
    """A tensor's raw_data is not as long as its shape and type say: encode it plainly."""


_RAW_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_RAW_KEY = _key(_RAW_FIELD)


_EXTERNAL_FIELDS = {onnx.TensorProto.DESCRIPTOR.fields_by_name[n].number
                    for n in ("external_data", "data_location")}


def _around_raw(t: onnx.TensorProto, skip: set[int]) -> tuple[bytes, bytes]:
    """The encodings of t's fields before and after raw_data (fields numbered in `skip` left out)."""
    before, after = onnx.TensorProto(), onnx.TensorProto()
    for fd, value in t.ListFields():
        if fd.number == _RAW_FIELD or fd.number in skip:
            continue
        copy_field(before if fd.number < _RAW_FIELD else after, fd, value)
    return before.SerializeToString(), after.SerializeToString()


def _raw_piece(t: onnx.TensorProto, arrays: dict | None = None) -> _RawTensor | None:
    key = _stub_key(t, arrays)
    if key is not None:
        # a stub written as the tensor it stands for: its fields with raw_data = the array's bytes
        arr = arrays[key]
        return _RawTensor(t, *_around_raw(t, _EXTERNAL_FIELDS), _source_nbytes(arr), arr)
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
    return _RawTensor(t, *_around_raw(t, set()), n)


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
        if isinstance(piece, _RawTensor) and isinstance(piece.array, np.ndarray):
            f.write(piece.before)
            f.write(_RAW_KEY + _varint(piece.nbytes))
            _write_array(f, piece.array)
            f.write(piece.after)
        elif isinstance(piece, _RawTensor):
            # raw_data of the input's TensorProto (a stub's source) or of the tensor itself
            raw = (piece.array if piece.array is not None else piece.tensor).raw_data
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
