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

The package: `graphopt.io` loads, checks and saves; `tensors` walks and sizes a model's
tensors; `external` handles external data (location checks, memory maps, stubs);
`wire` parses and writes the protobuf encoding in pieces.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from ..errors import GraphoptError
from .external import (_lazy_loadable, _materialize, _source_nbytes, _stub_key, _write_external, external_files,
                       export_model, map_external_data)
from .tensors import _fixed_nbytes, iter_model_tensors, model_byte_size
from .wire import _parse_file, write_model

# used from graphopt.io by other modules
__all__ = ["EXTERNAL_DATA_THRESHOLD", "_fixed_nbytes", "check_destination", "check_ops", "check_writable_folder",
           "export_model", "iter_model_tensors", "load", "load_with_sources", "map_external_data", "save",
           "write_model"]

log = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)


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
    from ..ir import iter_proto_nodes

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
