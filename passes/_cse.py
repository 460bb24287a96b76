"""What `cse` (passes/cleanup.py) merges: identical initializers, by a digest of their
bytes confirmed byte for byte, and identical nodes (same op, domain, attributes and
inputs), repeatedly until none is left."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.ir import replace_all_uses, sort_nodes, subgraphs_of, why_not_replace

# ops whose every run draws new values: never merged (nor folded, in cleanup)
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Multinomial", "Bernoulli"}


def dedup_constants(graph: gs.Graph) -> int:
    by_key: dict[tuple, list[gs.Constant]] = {}
    graph_outs = {id(t) for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and id(t) not in graph_outs:
            try:
                key = (np.dtype(t.dtype).str, tuple(t.shape))
            except Exception:
                continue
            by_key.setdefault(key, []).append(t)
    merged = 0
    for (dtype, _), group0 in by_key.items():
        if len(group0) < 2 or np.dtype(dtype).kind == "O":
            continue  # object (string) arrays: bytes are pointers, not values
        # Cheap prefilter: a strided sample of ~64 elements; only tensors whose samples
        # collide are compared in full (big weights of equal shape rarely collide).
        by_sample: dict[bytes, list[gs.Constant]] = {}
        for t in group0:
            sample = _sample(t)
            if sample is not None:
                by_sample.setdefault(sample, []).append(t)
        for cands in by_sample.values():
            if len(cands) < 2:
                continue
            seen: dict[bytes, tuple[gs.Constant, memoryview]] = {}
            for t in cands:
                raw = _constant_bytes(t)
                if raw is None:
                    continue
                digest = hashlib.blake2b(raw, digest_size=16).digest()
                hit = seen.get(digest)
                if hit is None:
                    seen[digest] = (t, raw)
                    continue
                keep, keep_raw = hit
                if not np.array_equal(np.frombuffer(keep_raw, np.uint8), np.frombuffer(raw, np.uint8)):
                    continue
                for node in list(t.outputs):
                    for i, inp in enumerate(node.inputs):
                        if inp is t:
                            node.inputs[i] = keep
                merged += 1
    return merged


def _sample(t: gs.Constant) -> bytes | None:
    """A strided sample of ~64 elements of a constant's bytes (None: not comparable by
    bytes). Remembered on the constant for as long as it holds the same values object,
    so the fixed-point iterations of `clean` do not read every weight again."""
    cached = getattr(t, "_graphopt_sample", None)
    if cached is not None and cached[0] is t._values:
        return cached[1]
    raw = _constant_bytes(t)
    if raw is None:
        return None
    flat = np.frombuffer(raw, dtype=np.uint8)
    itemsize = np.dtype(t.dtype).itemsize
    if itemsize > 1 and flat.size % itemsize == 0:
        flat = flat.reshape(-1, itemsize)
    step = max(1, len(flat) // 64)
    sample = flat[::step].tobytes() + len(flat).to_bytes(8, "little")
    t._graphopt_sample = (t._values, sample)
    return sample


def _constant_bytes(t: gs.Constant):
    """The little-endian bytes of a constant's values, without converting a constant
    still held as its ONNX tensor (LazyValues) into a numpy array: that would keep a
    second copy of every compared weight and make exporting it copy it again. None
    when the bytes do not identify the values (object arrays, non-raw storage)."""
    values = t._values
    if isinstance(values, LazyValues):
        proto = values.tensor
        if isinstance(proto, onnx.TensorProto) and proto.HasField("raw_data") \
                and proto.data_location != onnx.TensorProto.EXTERNAL:
            try:
                itemsize = np.dtype(t.dtype).itemsize
            except TypeError:
                return None
            raw = proto.raw_data
            if len(raw) != itemsize * int(np.prod(t.shape, dtype=np.int64)):
                return None
            if np.little_endian or itemsize == 1:
                return memoryview(raw)
        values = t.values
    if not isinstance(values, np.ndarray) or values.dtype.kind == "O":
        return None
    v = np.ascontiguousarray(values)
    if not v.dtype.isnative:
        v = v.astype(v.dtype.newbyteorder("="))
    return memoryview(v.view(np.uint8).reshape(-1)) if v.size else memoryview(b"")


def _attr_key(v):
    if isinstance(v, gs.Constant):
        return ("T", np.dtype(v.dtype).str, tuple(v.shape), np.ascontiguousarray(v.values).tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, float) and v != v:
        return ("nan",)
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, onnx.TypeProto):
        return ("TypeProto", v.SerializeToString(deterministic=True))
    return v


def merge_identical_nodes(graph: gs.Graph) -> int:
    sort_nodes(graph)
    seen: dict[tuple, gs.Node] = {}
    merged: list[gs.Node] = []
    for node in graph.nodes:
        if node.op in RANDOM_OPS or subgraphs_of(node) or not node.outputs:
            continue
        if (node.domain or "") not in ("", "ai.onnx"):
            continue
        try:
            attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
            hash(attrs)
        except Exception:
            continue
        key = (node.op, node.domain, attrs, tuple(id(t) if t.name else None for t in node.inputs),
               len(node.outputs))
        prev = seen.get(key)
        if prev is None:
            seen[key] = node
            continue
        pairs = [(old, new) for old, new in zip(node.outputs, prev.outputs) if old.name]
        if any(not new.name for old, new in pairs):
            continue
        reasons = [why_not_replace(old, new, graph) for old, new in pairs]
        if any(r is not None for r in reasons):
            continue
        for old, new in zip(node.outputs, prev.outputs):
            if old.name:
                replace_all_uses(old, new, graph)
        merged.append(node)
    return drop_nodes(graph, merged)


def drop_nodes(graph: gs.Graph, nodes: list[gs.Node]) -> int:
    """Detach `nodes` (their outputs were rewired or made constants) and drop them from
    `graph`; how many."""
    for node in nodes:
        node.outputs.clear()
        node.inputs.clear()
    if nodes:
        graph.nodes = [n for n in graph.nodes if n.outputs]
    return len(nodes)
