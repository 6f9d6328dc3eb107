"""ShortGPT-style layer removal: Block Influence BI_i = 1 − mean cos(in_i, out_i) over the
calibration tokens; whole layers with the lowest BI are removed until the parameter target is met
(the last layer standing is never removed). Layer ranges restrict which layers may go."""

from __future__ import annotations

from llmsculpt.errors import SculptError
from llmsculpt.measure import Needs
from llmsculpt.methods.base import PruneContext, PruneResult, check_options, register
from llmsculpt.methods.oneshot import scope_of
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture


@register("shortgpt")
def shortgpt(ctx: PruneContext) -> PruneResult:
    check_options("shortgpt", ctx.config.options)
    model, cfg = ctx.model, ctx.config
    arch = architecture(model)
    remove = cfg.removal_target(arch.param_count())
    ids = scope_of(cfg, len(arch.layers)).layer_ids(len(arch.layers))
    layer = ctx.engine.measure(model, ctx.calibration(cfg.seed), Needs(layer_change="cosine")).layer
    block_influence = (1.0 + layer).tolist()  # values are −cos
    plan = Plan.keep_all(arch)
    removed = 0
    order = sorted(ids, key=lambda i: block_influence[i])
    for i in order:
        if removed >= remove:
            break
        if sum(not lp.drop for lp in plan.layers) == 1:
            break
        plan.layers[i].drop = True
        removed += arch.layer_params(arch.layers[i])
    if removed < remove:
        raise SculptError(
            f"removing whole layers frees at most {removed:,} of the {remove:,} parameters asked for; "
            "lower the ratio or widen --layers"
        )
    return PruneResult(plan=plan, history={"block_influence": block_influence,
                                           "removed_layers": [i for i, lp in enumerate(plan.layers) if lp.drop]})
