"""Copying protobuf fields one by one (templates of a model without its graph, skeletons
without their weights, tensors split around their raw data)."""

from __future__ import annotations

from typing import Any, Iterable


def copy_field(dst: Any, fd: Any, value: Any) -> None:
    """Set field `fd` (a FieldDescriptor of dst's type) of message `dst` to `value`."""
    repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
    if repeated:
        getattr(dst, fd.name).extend(value)
    elif fd.message_type is not None:
        getattr(dst, fd.name).CopyFrom(value)
    else:
        setattr(dst, fd.name, value)


def copy_fields(src: Any, dst: Any, *, skip: Iterable[str] = ()) -> None:
    """Copy every set field of `src` into `dst` except those named in `skip`."""
    skip = set(skip)
    for fd, value in src.ListFields():
        if fd.name not in skip:
            copy_field(dst, fd, value)
