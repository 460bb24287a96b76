"""Value types and attributes that onnx-graphsurgeon does not keep.

Importing this module installs the importer/exporter patches described below on gs's
classes (once); graphopt.ir imports it first, so every gs import/export in the process
keeps these types.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter as _OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter
from onnx_graphsurgeon.logger import G_LOGGER as _GS_LOGGER

# gs is chatty at WARNING level about things we handle ourselves.
_GS_LOGGER.severity = _GS_LOGGER.ERROR

# -- value types that onnx-graphsurgeon does not keep ---------------------------------
#
# gs models every value as a tensor with a numpy dtype and a `type` string. For a
# sequence of sequences, an optional, a map or an opaque value it keeps no usable element
# type, and exporting an optional raises UnboundLocalError. The importer below remembers
# the exact TypeProto of every value whose ValueInfo is not a plain tensor (on the gs
# Variable, as `_graphopt_type`), and the exporter writes it back. Both are installed on
# gs's importer/exporter classes once, when this module is imported, so every path that
# exports through gs (Model.to_onnx, subgraph attributes, fold-constants' sessions) keeps
# the types.

_TYPE_ATTR = "_graphopt_type"
_KIND_OF_FIELD = {"tensor_type": "tensor", "sequence_type": "sequence", "optional_type": "optional",
                  "map_type": "map", "sparse_tensor_type": "sparse_tensor", "opaque_type": "opaque"}


def _import_tensor_keeping_type(onnx_tensor):
    tensor = _GS_IMPORT_TENSOR(onnx_tensor)
    if isinstance(onnx_tensor, onnx.ValueInfoProto) and onnx_tensor.type.ByteSize() > 0:
        field = onnx_tensor.type.WhichOneof("value")
        if field is not None and field != "tensor_type":
            tp = onnx.TypeProto()
            tp.CopyFrom(onnx_tensor.type)
            setattr(tensor, _TYPE_ATTR, tp)
    return tensor


def _export_value_info_keeping_type(tensor, do_type_check: bool) -> onnx.ValueInfoProto:
    tp = getattr(tensor, _TYPE_ATTR, None)
    if tp is not None and not isinstance(tensor, gs.Constant):
        vi = onnx.ValueInfoProto()
        vi.name = tensor.name
        vi.type.CopyFrom(tp)
        return vi
    kind = getattr(tensor, "type", "tensor_type")
    if isinstance(tensor, gs.Constant) or kind in ("tensor_type", "sequence_type", "sparse_tensor_type"):
        try:
            return _GS_EXPORT_VALUE_INFO(tensor, do_type_check)
        except (UnboundLocalError, TypeError, ValueError):
            pass
    # An optional, a map or an opaque value whose exact type is unknown here: an untyped
    # ValueInfo (onnx's type inference fills it in) rather than a wrong tensor type.
    return onnx.helper.make_empty_tensor_value_info(tensor.name)


def value_type(t: gs.Tensor) -> onnx.TypeProto | None:
    """The exact ONNX type of a non-tensor value as imported (None for tensors/unknown)."""
    return getattr(t, _TYPE_ATTR, None)


def copy_value_type(src: gs.Tensor, dst: gs.Tensor) -> None:
    """Give `dst` the value type of `src` (dtype, shape, and a non-tensor type)."""
    if isinstance(dst, gs.Constant):
        return
    if dst.dtype is None:
        dst.dtype = src.dtype
    if dst.shape is None:
        dst.shape = src.shape
    if not isinstance(src, gs.Constant):
        dst.type = getattr(src, "type", "tensor_type")
        tp = value_type(src)
        if tp is not None:
            setattr(dst, _TYPE_ATTR, tp)


_KEPT_ATTR_TYPES = {onnx.AttributeProto.TYPE_PROTO: "tp", onnx.AttributeProto.TYPE_PROTOS: "type_protos"}


def _import_attributes_keeping_types(onnx_attributes, *args, **kwargs):
    """gs drops TYPE_PROTO attributes (e.g. Optional's `type`), which changes what the
    node means; keep them as TypeProto values (onnx.helper.make_attribute writes them)."""
    attrs = _GS_IMPORT_ATTRIBUTES(onnx_attributes, *args, **kwargs)
    for attr in onnx_attributes:
        field = _KEPT_ATTR_TYPES.get(attr.type)
        if field is None or attr.name in attrs or attr.ref_attr_name:
            continue
        if field == "tp":
            tp = onnx.TypeProto()
            tp.CopyFrom(attr.tp)
            attrs[attr.name] = tp
        else:
            attrs[attr.name] = [onnx.TypeProto.FromString(t.SerializeToString()) for t in attr.type_protos]
    return attrs


_GS_IMPORT_ATTRIBUTES = OnnxImporter.import_attributes

_GS_IMPORT_TENSOR = OnnxImporter.import_tensor
_GS_EXPORT_VALUE_INFO = _OnnxExporter.export_value_info_proto
if not getattr(OnnxImporter, "_graphopt_patched", False):
    OnnxImporter.import_tensor = staticmethod(_import_tensor_keeping_type)
    _OnnxExporter.export_value_info_proto = staticmethod(_export_value_info_keeping_type)
    OnnxImporter.import_attributes = staticmethod(_import_attributes_keeping_types)
    OnnxImporter._graphopt_patched = True
