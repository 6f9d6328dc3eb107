"""One-shot pruning by importance: measurements -> group scores -> budgets -> plan.

Shared by the uniform LLM-Pruner-style baseline and the activation / magnitude baselines; the
per-layer sparsity offsets are what tell uniform and adaptive allocations apart.
"""

from __future__ import annotations

import torch

from llmsculpt.allocation import PruneScope, select_plan, solve_uniform_offset
from llmsculpt.config import PruneConfig, parse_layers
from llmsculpt.importance import get_metric
from llmsculpt.importance.groups import GroupReducer, GroupScores, score_groups
from llmsculpt.measure import Needs
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import Architecture


def scope_of(config: PruneConfig, n_layers: int, *, default_split: str = "proportional") -> PruneScope:
    return PruneScope(
        layers=parse_layers(config.layers, n_layers),
        attention=config.attention,
        mlp=config.mlp,
        attn_unit=config.attn_unit,
        split=config.split or default_split,
        round_to=config.round_to,
    )


def score(engine, model, batch: torch.Tensor, config: PruneConfig, *, metric_kwargs: dict | None = None) -> GroupScores:
    """Group scores of ``config.metric`` on ``batch``, measured with ``engine``; a gradient metric's
    gradients are reduced to group-score vectors as the backward pass produces them."""
    metric = get_metric(config.metric, **(metric_kwargs or {}))
    measured = engine.measure(model, batch, Needs.for_metric(metric), reducer=reducer_for(model, metric))
    return score_groups(model, measured, metric, aggregation=config.aggregation)


def reducer_for(model, metric) -> GroupReducer | None:
    """The streaming reducer for ``metric``, or None when it needs no gradients (or more than them)."""
    return GroupReducer(model, [metric]) if GroupReducer.handles(metric) else None


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

