"""upgrade-opset: convert the model with onnx's version converter, only when the user allowed
it (--allow-opset-upgrade) and a fusion found needs the newer opset (HardSwish 14,
LayerNormalization 17, Gelu 20: the `emits` of those rules)."""

from __future__ import annotations

import logging

from graphopt import Model, Option, Pass, PassContext, PassResult, register_pass

from .activation import FuseGelu, FuseHardSwish
from .transformer import FuseLayerNorm

log = logging.getLogger(__name__)


# (rule, ops whose presence is enough, ops whose presence asks the rule for a real match):
# HardSwish spelled x * Clip(x + 3, 0, 6) / 6 only counts when it is there, not for any Clip.
NEEDS = ((FuseHardSwish, {"HardSigmoid"}, {"Clip", "Add"}), (FuseLayerNorm, {"ReduceMean", "Sqrt"}, None),
         (FuseGelu, {"Erf"}, None))


def _wanted_opset(model: Model, ctx: PassContext) -> int:
    """The lowest opset the rules whose signature ops (or matches) the model has may emit for ctx.target."""
    ops = {n.op for n in model.graph.nodes}
    want = 0
    for rule, signature, maybe in NEEDS:
        span = rule.emits.get(ctx.target, rule.emits.get(None))
        if span is not None and (signature <= ops or (maybe is not None and maybe <= ops and rule().found(model, ctx))):
            want = max(want, span[0])
    return want


@register_pass("upgrade-opset")
class UpgradeOpset(Pass):
    """Convert to a newer opset when allowed (--allow-opset-upgrade) and a fusion needs it."""

    contract = "float"
    options = {"version": Option(int, 0, "target opset (0: the lowest that the fusions found need)")}

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if not ctx.allow_opset_upgrade:
            return PassResult(False, {})
        cur = model.opset() or 0
        want = self.version or _wanted_opset(model, ctx)
        if want <= cur:
            return PassResult(False, {})
        import onnx
        from onnx import version_converter
        try:
            converted = version_converter.convert_version(model.to_onnx(), want)
            onnx.checker.check_model(converted)
        except Exception as e:  # the converter fails on assorted models
            log.warning("opset upgrade %d -> %d failed, keeping opset %d: %s", cur, want, cur, str(e).splitlines()[0] if str(e) else e)
            return PassResult(False, {"failed": 1})
        model.replace_with(Model.from_onnx(converted))
        return PassResult(True, {"from": cur, "to": want})
