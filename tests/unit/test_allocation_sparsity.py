"""Per-layer sparsity → whole structures: the parameter-target solver and plan selection."""

from __future__ import annotations

import pytest
import torch

from llmsculpt.allocation.sparsity import (
    LayerBudget,
    PruneScope,
    counts_for_sparsity,
    select_plan,
    solve_uniform_offset,
)
from llmsculpt.errors import SculptError
from llmsculpt.importance.groups import GroupScores, LayerScores
from llmsculpt.structures.shapes import Architecture, LayerShape

PER_CHANNEL = 3 * 64  # gate row + up row + down column at hidden 64
PER_KV_UNIT = 2 * 2 * 64 * 16 + 2 * 64 * 16  # 2 query heads (q rows + o cols) + k rows + v rows


def _prunable(arch: Architecture) -> int:
    return sum(arch.layer_params(ls) for ls in arch.layers)


def _removed(budgets: dict[int, LayerBudget]) -> int:
    return sum(b.removed_params for b in budgets.values())


def _budgets_at(arch, s, scope, offsets=None):
    offsets = offsets or {}
    return {i: counts_for_sparsity(arch, arch.layers[i], s - offsets.get(i, 0.0), scope)
            for i in scope.layer_ids(len(arch.layers))}


def _mixed_arch(arch_of) -> Architecture:
    """Layers of different MLP widths, so the solver cannot move them in lockstep."""
    base = arch_of()
    layers = tuple(LayerShape(ls.n_heads, ls.n_kv, mlp, ls.kv_map) for ls, mlp in zip(base.layers, (96, 80, 64, 112)))
    return Architecture(**{**base.__dict__, "layers": layers})


@pytest.mark.parametrize("frac", [0.05, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("scope", [PruneScope(), PruneScope(attn_unit="head"), PruneScope(attention=False),
                                   PruneScope(split="importance")],
                         ids=["kv", "head", "mlp-only", "importance-split-no-scores"])
def test_solver_reaches_the_target_with_the_smallest_sparsity(arch_of, frac, scope):
    arch = _mixed_arch(arch_of)
    remove = int(frac * _prunable(arch))
    s, budgets = solve_uniform_offset(arch, remove, scope)
    got = _removed(budgets)
    assert got >= remove
    # the smallest such S: a hair below it the target is missed
    assert _removed(_budgets_at(arch, s - 1e-9, scope)) < remove
    # and the overshoot is at most one MLP channel per layer
    assert got - remove <= len(arch.layers) * PER_CHANNEL


def test_solver_attention_only_removes_whole_groups(arch):
    scope = PruneScope(mlp=False)
    remove = int(0.1 * _prunable(arch))
    s, budgets = solve_uniform_offset(arch, remove, scope)
    assert _removed(budgets) >= remove > _removed(_budgets_at(arch, s - 1e-9, scope))
    assert all(b.mlp_channels == 0 and b.removed_params == b.attn_units * PER_KV_UNIT for b in budgets.values())
    with pytest.raises(SculptError, match="cannot remove"):  # every layer keeps one K/V group
        solve_uniform_offset(arch, int(0.6 * _prunable(arch)), scope)


def test_solver_budgets_match_the_resulting_parameter_count(arch):
    scope = PruneScope()
    remove = int(0.3 * _prunable(arch))
    _, budgets = solve_uniform_offset(arch, remove, scope)
    plan = select_plan(arch, _ranked_scores(arch), budgets, scope)
    assert plan.resulting(arch).param_count() == arch.param_count() - _removed(budgets)


def test_offsets_shift_the_removal_between_layers(arch):
    remove = int(0.3 * _prunable(arch))
    _, plain = solve_uniform_offset(arch, remove, PruneScope())
    _, skewed = solve_uniform_offset(arch, remove, PruneScope(), offsets={0: 0.2, 3: -0.2})
    assert skewed[0].removed_params < plain[0].removed_params < skewed[3].removed_params
    assert _removed(skewed) >= remove


def test_only_the_selected_layers_are_pruned(arch):
    _, budgets = solve_uniform_offset(arch, 10_000, PruneScope(layers=(1, 2)))
    assert set(budgets) == {1, 2} and _removed(budgets) >= 10_000


def test_round_to_keeps_mlp_widths_at_multiples_and_lands_near_the_target(arch):
    scope = PruneScope(attention=False, round_to=32)
    remove = int(0.3 * _prunable(arch))
    _, budgets = solve_uniform_offset(arch, remove, scope)
    kept = [arch.layers[i].mlp - b.mlp_channels for i, b in budgets.items()]
    assert all(k % 32 == 0 for k in kept), kept
    assert abs(_removed(budgets) - remove) <= 32 * PER_CHANNEL // 2


def test_an_unreachable_target_says_so(arch):
    with pytest.raises(SculptError, match="cannot remove"):
        solve_uniform_offset(arch, _prunable(arch), PruneScope())
    with pytest.raises(SculptError, match="selects no layers"):
        solve_uniform_offset(arch, 1000, PruneScope(layers=(9,)))


def test_counts_for_sparsity_zero_is_a_no_op_and_attention_rounds_to_whole_groups(arch):
    ls = arch.layers[0]
    assert counts_for_sparsity(arch, ls, 0.0, PruneScope()) == LayerBudget()
    # 2 K/V groups: a group goes only once the layer's sparsity passes 25 %
    assert counts_for_sparsity(arch, ls, 0.2, PruneScope()).attn_units == 0
    assert counts_for_sparsity(arch, ls, 0.3, PruneScope()).attn_units == 1
    b = counts_for_sparsity(arch, ls, 0.3, PruneScope())
    assert b.removed_params == b.attn_units * PER_KV_UNIT + b.mlp_channels * PER_CHANNEL
    assert abs(b.removed_params - 0.3 * arch.layer_params(ls)) < 0.01 * arch.layer_params(ls) + PER_CHANNEL


def test_scope_rejects_bad_settings():
    with pytest.raises(SculptError, match="attn_unit"):
        PruneScope(attn_unit="row")
    with pytest.raises(SculptError, match="split"):
        PruneScope(split="random")
    with pytest.raises(SculptError, match="nothing to prune"):
        PruneScope(attention=False, mlp=False)


# ---- select_plan ---------------------------------------------------------------------------
def _ranked_scores(arch: Architecture, seed: int = 0) -> GroupScores:
    gen = torch.Generator().manual_seed(seed)
    return GroupScores(layers=[LayerScores(heads=torch.rand(ls.n_heads, generator=gen),
                                           kv=torch.rand(ls.n_kv, generator=gen),
                                           mlp=torch.rand(ls.mlp, generator=gen)) for ls in arch.layers])


def test_select_plan_keeps_the_highest_scored_groups(arch):
    scores = _ranked_scores(arch)
    budgets = {0: LayerBudget(attn_units=1, mlp_channels=10), 2: LayerBudget(mlp_channels=40)}
    plan = select_plan(arch, scores, budgets, PruneScope())
    plan.validate(arch)
    for i, lp in enumerate(plan.layers):
        sc = scores.layers[i]
        if i not in budgets:
            assert lp.heads is None and lp.kv_heads is None and lp.mlp is None
            continue
        b = budgets[i]
        assert sorted(lp.mlp) == sorted(torch.argsort(sc.mlp, descending=True)[: 96 - b.mlp_channels].tolist())
        if b.attn_units:
            best_kv = int(torch.argmax(sc.kv))
            assert lp.kv_heads == [best_kv]
            assert lp.heads == [h for h in range(4) if arch.layers[i].kv_map[h] == best_kv]
        else:
            assert lp.heads is None and lp.kv_heads is None


def test_select_plan_head_unit_drops_the_weakest_head_of_every_group(arch):
    scores = _ranked_scores(arch)
    scores.layers[1].heads = torch.tensor([0.9, 0.1, 0.2, 0.8])  # group 0: heads 0,1; group 1: heads 2,3
    plan = select_plan(arch, scores, {1: LayerBudget(attn_units=1)}, PruneScope(attn_unit="head"))
    assert plan.layers[1].heads == [0, 3] and plan.layers[1].kv_heads == [0, 1]


def test_select_plan_breaks_ties_by_index(arch):
    scores = _ranked_scores(arch)
    scores.layers[0].mlp = torch.ones(96)
    plan = select_plan(arch, scores, {0: LayerBudget(mlp_channels=5)}, PruneScope())
    assert plan.layers[0].mlp == list(range(5, 96))  # a stable sort drops the first equals
