"""One-shot pruning by importance: measurements -> group scores -> budgets -> plan.

Shared by the uniform LLM-Pruner-style baseline and the activation / magnitude baselines; the
per-layer sparsity offsets are what tell uniform and adaptive allocations apart.

Hidden (stem) channels (``PruneConfig.hidden``): the scores then include the hidden channels,
with the embedding, lm_head and norms given gradients too for a gradient metric (streamed like
the rest: ``GroupReducer(hidden=True)``), and the solver prunes the hidden width with the layers.
"""

from __future__ import annotations

import torch

from llmsculpt.allocation import PruneScope, select_plan, solve_uniform_offset
from llmsculpt.config import PruneConfig, parse_layers
from llmsculpt.config.base import round_to_for
from llmsculpt.errors import SculptError
from llmsculpt.importance import get_metric
from llmsculpt.importance.groups import GroupReducer, GroupScores, score_groups
from llmsculpt.measure import Needs
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import Architecture

# the methods that can prune hidden channels (PruneConfig.check_options refuses the others)
HIDDEN_METHODS = ("uniform", "magnitude", "wanda-sp", "adaptive")


def scope_of(config: PruneConfig, n_layers: int, *, default_split: str = "proportional") -> PruneScope:
    return PruneScope(
        layers=parse_layers(config.layers, n_layers),
        attention=config.attention,
        mlp=config.mlp,
        attn_unit=config.attn_unit,
        split=config.split or default_split,
        round_to=round_to_for(config.round_to, config.serve),
        hidden=config.hidden,
        serve=config.serve,
    )


def score(engine, model, batch: torch.Tensor, config: PruneConfig, *, metric_kwargs: dict | None = None) -> GroupScores:
    """Group scores of ``config.metric`` on ``batch``, measured with ``engine``; a gradient metric's
    gradients are reduced to group-score vectors as the backward pass produces them."""
    metric = get_metric(config.metric, **(metric_kwargs or {}))
    hidden = bool(config.hidden)
    measured = engine.measure(model, batch, needs_for(metric, hidden=hidden),
                              reducer=reducer_for(model, metric, hidden=hidden))
    if getattr(engine, "layer_by_layer", False):  # weights resident one layer at a time
        if hidden:
            raise SculptError("hidden-channel pruning is not available layer by layer; drop one of the two")
        return engine.group_scores(model, measured, metric, aggregation=config.aggregation)
    return score_groups(model, measured, metric, aggregation=config.aggregation, hidden=hidden)


def needs_for(metric, *, hidden: bool = False, **extra) -> Needs:
    """What ``metric`` needs measured; with ``hidden`` the embedding, lm_head and norms get gradients too."""
    if hidden and Needs.for_metric(metric).wants_grad:
        extra["grad_params"] = "hidden"
    return Needs.for_metric(metric, **extra)


def reducer_for(model, metric, *, hidden: bool = False) -> GroupReducer | None:
    """The streaming reducer for ``metric``, or None when it needs no gradients (or more than them)."""
    return GroupReducer(model, [metric], hidden=hidden) if GroupReducer.handles(metric) else None


def plan_step(
    arch: Architecture,
    scores: GroupScores,
    remove: int,
    scope: PruneScope,
    offsets: dict[int, float] | None = None,
    original: Architecture | None = None,
) -> tuple[Plan, float, dict]:
    """Budgets for removing ``remove`` params with the given per-layer offsets, and the plan.

    With ``original`` the sparsities are cumulative relative to it (iterative pruning)."""
    s, budgets = solve_uniform_offset(arch, remove, scope, offsets=offsets, original=original, scores=scores)
    plan = select_plan(arch, scores, budgets, scope)
    per_layer = {
        i: {"attn_units": b.attn_units, "mlp_channels": b.mlp_channels, "removed": b.removed_params}
        for i, b in budgets.items()
    }
    return plan, s, per_layer


def hidden_history(plan: Plan, arch: Architecture) -> dict:
    """The report's entry for a plan's hidden width (empty when hidden channels were not pruned)."""
    return {} if plan.hidden is None else {"hidden": len(plan.hidden), "hidden_before": arch.hidden}

