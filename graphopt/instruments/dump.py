"""DumpAfter: save the model after chosen passes (`graphopt MODEL --dump-after PASS`)."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import io
from ..ir import Model
from ..pipeline import Instrument, Pass, PassContext, PassRecord

log = logging.getLogger(__name__)


class DumpAfter(Instrument):
    """Write the model to `directory` after each run of the named passes (or all: '*')."""

    def __init__(self, names: list[str], directory: str | Path) -> None:
        self.names = set(names)
        self.directory = Path(directory)
        self.count = 0

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        if "*" not in self.names and p.name not in self.names and (record.group or "") not in self.names:
            return
        self.count += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.count:03d}-{p.name}.onnx"
        io.save(model.to_onnx(), path)
        record.extra["dumped"] = str(path)
        log.info("dumped model after %s to %s", p.name, path)
