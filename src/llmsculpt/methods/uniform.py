"""Uniform one-shot pruning (LLM-Pruner style) and the importance baselines that share its path.

Every pruned layer gets the same sparsity; importance picks which heads/channels go:
``uniform`` (config metric, Taylor by default), ``magnitude`` (L2), ``wanda-sp`` (|W|·‖X‖).
With ``hidden`` the hidden width loses hidden × the layers' sparsity as well (allocation/sparsity.py).
"""

from __future__ import annotations

from dataclasses import replace

from llmsculpt.methods.base import PruneContext, PruneResult, check_options, register
from llmsculpt.methods.oneshot import hidden_history, plan_step, score, scope_of
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture


def _one_shot(ctx: PruneContext, name: str, metric: str | None = None) -> PruneResult:
    check_options(name, ctx.config.options)
    config = ctx.config if metric is None else replace(ctx.config, metric=metric)
    model = ctx.model
    arch = architecture(model)
    remove = config.removal_target(arch.param_count())
    if remove == 0:
        return PruneResult(plan=Plan.keep_all(arch), history={"sparsity": 0.0})
    scope = scope_of(config, len(arch.layers))
    scores = score(ctx.engine, model, ctx.calibration(config.seed), config)
    plan, s, per_layer = plan_step(arch, scores, remove, scope)
    history = {"sparsity": s, "per_layer": per_layer, "metric": config.metric, **hidden_history(plan, arch)}
    return PruneResult(plan=plan, history=history)


@register("uniform")
def uniform(ctx: PruneContext) -> PruneResult:
    return _one_shot(ctx, "uniform")


@register("magnitude")
def magnitude(ctx: PruneContext) -> PruneResult:
    return _one_shot(ctx, "magnitude", metric="l2")


@register("wanda-sp")
def wanda_sp(ctx: PruneContext) -> PruneResult:
    return _one_shot(ctx, "wanda-sp", metric="wanda")
