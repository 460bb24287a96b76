"""Walking the tensors of a ModelProto and sizing them without copying their bytes."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import onnx


def _walk(graph: onnx.GraphProto, of_graph: Callable, of_attr: Callable) -> Iterator:
    """What `of_graph` yields for a graph, then for each node attribute in order what
    `of_attr` yields and, depth first, the same for the subgraphs it holds."""
    yield from of_graph(graph)
    for node in graph.node:
        for attr in node.attribute:
            yield from of_attr(attr)
            if attr.HasField("g"):
                yield from _walk(attr.g, of_graph, of_attr)
            for g in attr.graphs:
                yield from _walk(g, of_graph, of_attr)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices


def attr_tensors(attr: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in a graph and its subgraphs: initializers and tensor attributes."""
    return _walk(graph, _graph_tensors, attr_tensors)


def iter_function_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """The tensor attributes of the nodes of a model's local functions."""
    for func in model.functions:
        for node in func.node:
            for attr in node.attribute:
                yield from attr_tensors(attr)


def iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from iter_tensors(model.graph)
    yield from iter_function_tensors(model)


def _attr_sparse(attr: onnx.AttributeProto) -> Iterator[onnx.SparseTensorProto]:
    if attr.HasField("sparse_tensor"):
        yield attr.sparse_tensor
    yield from attr.sparse_tensors


def iter_sparse(graph: onnx.GraphProto) -> Iterator[onnx.SparseTensorProto]:
    """Every SparseTensorProto in a graph and its subgraphs."""
    return _walk(graph, lambda g: g.sparse_initializer, _attr_sparse)


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
