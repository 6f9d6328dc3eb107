"""Per-layer sparsity -> whole structures, and the solver that hits a global parameter target.

A layer's sparsity S_i is a fraction of its attention+MLP parameters. Attention is removed in
whole units (K/V groups, or query heads evenly across groups), so a layer with 3 K/V groups can
only lose 0, 33 or 67 % of its attention: we round the attention share to the nearest unit and let
the MLP take up the difference, so the layer as a whole lands on S_i and both parts get pruned.
Uniform pruning is the special case S_i = S for all layers; Adapt-Pruner uses S_i = S − A·I_i.

With ``round_to`` N > 1 (see allocation/rounding.py) a layer's attention keeps an allowed unit
count: the nearest one, or, when units and channels are ranked together, the allowed counts are
taken in whole steps. Its MLP keeps at least the narrowest allowed width. Once the solver has
found S, the MLP widths are apportioned to multiples of N, so the total lands as near the target
as the multiples allow.

Hidden (stem) channels (``PruneScope.hidden`` = r > 0): the hidden width loses the fraction r·S of
its original width, S the solver's common sparsity (r = 1: the same fraction as heads and MLP
channels of a uniform layer). A layer's parameters depend on hidden × (heads, MLP), so the solver
counts the whole model at the trial width: it first finds the S that reaches the target with the
hidden width moving with it, fixes that width, then solves S again for the layers alone, so the
total lands on the target to within MLP channels rather than whole hidden channels (each one is
a column of every layer plus the embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from llmsculpt.allocation.rounding import allowed, apportion, head_step, nearest
from llmsculpt.allocation.serving import serve_rules, tie_budgets
from llmsculpt.config import check_round_to
from llmsculpt.config.prune import check_hidden_rate
from llmsculpt.errors import SculptError
from llmsculpt.importance.groups import GroupScores, LayerScores
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import Architecture, LayerShape

MAX_SPARSITY = 0.99
SPLITS = ("proportional", "importance")


@dataclass(frozen=True)
class PruneScope:
    """Which layers and parts may be pruned, and in which attention unit."""

    layers: tuple[int, ...] | None = None  # None: all layers
    attention: bool = True
    mlp: bool = True
    attn_unit: str = "kv"  # "kv": whole K/V groups; "head": query heads, evenly in every group
    # how a layer's sparsity is split between attention and MLP: "proportional" (both lose the
    # same fraction, rounded to whole units; LLM-Pruner) or "importance" (units and channels
    # ranked together by importance per parameter, lowest removed until the layer's target)
    split: str = "proportional"
    round_to: int = 1  # kept MLP widths and query heads × head_dim multiples of this (1: any)
    hidden: float = 0.0  # hidden (stem) channels lose hidden × S of their width (0: untouched)
    serve: str = "any"  # runtime whose shapes the budgets keep to (allocation/serving.py: tie_budgets)

    def __post_init__(self):
        if self.attn_unit not in ("kv", "head"):
            raise SculptError(f"attn_unit must be 'kv' or 'head', got {self.attn_unit!r}")
        if self.split not in SPLITS:
            raise SculptError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not (self.attention or self.mlp or self.hidden):
            raise SculptError("nothing to prune: both attention and MLP are excluded")
        check_hidden_rate(self.hidden)
        check_round_to(self.round_to)

    def layer_ids(self, n_layers: int) -> list[int]:
        return list(range(n_layers)) if self.layers is None else [i for i in self.layers if 0 <= i < n_layers]


@dataclass
class LayerBudget:
    """What one layer loses: attention units and MLP channels."""

    attn_units: int = 0
    mlp_channels: int = 0
    removed_params: int = 0
    meta: dict = field(default_factory=dict)


class Budgets(dict):
    """{layer: LayerBudget} as the solver found them; ``hidden`` is the hidden width to keep
    (None: unchanged). The layers' budgets are counted at that width."""

    hidden: int | None = None


def hidden_width(arch: Architecture, base: Architecture, s: float, scope: PruneScope) -> int:
    """The hidden width at common sparsity ``s``: ``base.hidden`` less the fraction hidden·s, never
    above the current width, at least 1 (with ``round_to``: the nearest allowed width)."""
    ideal = base.hidden * (1 - min(max(s * scope.hidden, 0.0), MAX_SPARSITY))
    if scope.round_to > 1:
        return nearest(min(ideal, arch.hidden), allowed(arch.hidden, scope.round_to))
    return min(arch.hidden, max(1, round(ideal)))


def _attn_unit_params(arch: Architecture, ls: LayerShape, unit: str) -> tuple[int, int]:
    """(number of units, parameters per unit) of one layer's attention."""
    h, d = arch.hidden, arch.head_dim
    bias = d if arch.qkv_bias else 0
    if unit == "kv":
        rep = ls.n_heads // ls.n_kv
        per = 2 * rep * h * d + 2 * h * d + bias * (rep + 2)
        return ls.n_kv, per
    rep = ls.n_heads // ls.n_kv
    return rep, ls.n_kv * (2 * h * d + bias)  # one query head from every group


def _attn_step(arch: Architecture, ls: LayerShape, scope: PruneScope) -> int:
    """Kept attention units come in multiples of this (1: any count); 0: none may go, because
    uneven groups cannot honour ``round_to`` by whole K/V groups or evenly spread heads."""
    if scope.round_to == 1:
        return 1
    if not ls.is_grouped_evenly:
        return 1 if head_step(scope.round_to, arch.head_dim) == 1 else 0
    per_unit = ls.n_heads // ls.n_kv if scope.attn_unit == "kv" else ls.n_kv
    return head_step(scope.round_to, arch.head_dim, per_unit)


def _mlp_floor(ls: LayerShape, scope: PruneScope) -> int:
    """The narrowest MLP a layer may keep: one channel, or with rounding the smallest allowed width."""
    return allowed(ls.mlp, scope.round_to)[0] if scope.round_to > 1 else 1


def counts_for_sparsity(
    arch: Architecture,
    ls: LayerShape,
    sparsity: float,
    scope: PruneScope,
    original: LayerShape | None = None,
    scores: LayerScores | None = None,
) -> LayerBudget:
    """What layer ``ls`` must lose so that it ends ``sparsity`` smaller than ``original``.

    ``sparsity`` is cumulative, relative to the layer's original shape (default: ``ls`` itself),
    so iterative pruning rounds attention against the original unit count: a layer with 3 K/V
    groups loses one once its cumulative sparsity passes ~17 %, even if every step is small.
    """
    sparsity = min(max(sparsity, 0.0), MAX_SPARSITY)
    orig = original or ls
    if scope.split == "importance" and scores is not None and scope.attention and scope.mlp:
        return _joint_budget(arch, ls, orig, sparsity, scope, scores)
    n_orig, per_unit = _attn_unit_params(arch, orig, scope.attn_unit)
    n_now, _ = _attn_unit_params(arch, ls, scope.attn_unit)
    step = _attn_step(arch, ls, scope)
    if (scope.attn_unit == "head" and not ls.is_grouped_evenly) or step == 0:
        n_orig = n_now = 1  # uneven groups cannot lose heads evenly; leave their attention alone
    per_channel = 3 * arch.hidden + (2 if arch.mlp_bias else 0)
    attn_total = n_orig * per_unit if scope.attention else 0
    mlp_total = orig.mlp * per_channel if scope.mlp else 0
    target = sparsity * (attn_total + mlp_total)
    keep_units = n_now
    if scope.attention and n_orig > 1:
        gone = round(sparsity * n_orig) if scope.mlp else round(target / per_unit)
        keep_units = min(n_now, min(max(n_orig - gone, 1), n_orig))
        if step > 1:
            ideal = n_orig - (sparsity * n_orig if scope.mlp else target / per_unit)
            keep_units = nearest(min(ideal, n_now), allowed(n_now, step))
    channels = 0
    if scope.mlp:
        attn_gone = (n_orig - keep_units) * per_unit if scope.attention else 0
        keep_mlp = orig.mlp - round(max(0.0, target - attn_gone) / per_channel)
        keep_mlp = min(ls.mlp, min(max(keep_mlp, _mlp_floor(ls, scope)), orig.mlp))
        channels = ls.mlp - keep_mlp
    units = n_now - keep_units
    return LayerBudget(units, channels, units * per_unit + channels * per_channel)


def _unit_scores(ls: LayerShape, scores: LayerScores, unit: str) -> list[float]:
    """Scores of removing the 1st, 2nd... attention unit (cheapest first)."""
    if unit == "kv":
        return sorted(scores.kv.tolist())
    per_group = [sorted(scores.heads[ls.heads_of(j)].tolist()) for j in range(ls.n_kv)]
    return [sum(g[r] for g in per_group) for r in range(min(len(g) for g in per_group))]


def _unit_chunks(units: list[float], n_now: int, step: int) -> list[tuple[float, int]]:
    """(summed score, units) of each removal that takes the kept count from one allowed value to
    the next lower one, cheapest first; with step 1 simply every unit."""
    if step == 1:
        return [(v, 1) for v in units[: max(0, n_now - 1)]]
    down = allowed(n_now, step)[::-1]
    return [(sum(units[n_now - a : n_now - b]), a - b) for a, b in zip(down, down[1:])]


def _joint_budget(arch, ls, orig, sparsity, scope, scores) -> LayerBudget:
    n_now, per_unit = _attn_unit_params(arch, ls, scope.attn_unit)
    per_channel = 3 * arch.hidden + (2 if arch.mlp_bias else 0)
    n_orig, _ = _attn_unit_params(arch, orig, scope.attn_unit)
    full = n_orig * per_unit + orig.mlp * per_channel
    need = sparsity * full - (full - (n_now * per_unit + ls.mlp * per_channel))
    step = _attn_step(arch, ls, scope)
    if need <= 0 or (scope.attn_unit == "head" and not ls.is_grouped_evenly):
        return LayerBudget()
    units = _unit_chunks(_unit_scores(ls, scores, scope.attn_unit), n_now, step) if step else []
    channels = sorted(scores.mlp.tolist())[: ls.mlp - _mlp_floor(ls, scope)]
    # greedy by loss per parameter saved; a unit that would overshoot the target is skipped
    # (and, being a prefix, so is every later unit: a unit goes only after the cheaper ones)
    items = [(v / (n * per_unit), n * per_unit, n) for v, n in units]
    items += [(v / per_channel, per_channel, 0) for v in channels]
    items.sort(key=lambda t: t[0])
    removed, n_units, n_channels, units_closed = 0, 0, 0, False
    for _, size, n in items:
        if removed >= need:
            break
        if removed + size > need + per_channel or (n and units_closed):
            units_closed = units_closed or bool(n)
            continue
        removed += size
        n_units += n
        n_channels += not n
    return LayerBudget(n_units, n_channels, removed)


def solve_uniform_offset(
    arch: Architecture,
    remove: int,
    scope: PruneScope,
    *,
    offsets: dict[int, float] | None = None,
    original: Architecture | None = None,
    scores: GroupScores | None = None,
) -> tuple[float, Budgets]:
    """Find S so that layers with sparsity S − offsets[i] (clipped) remove ≈ ``remove`` params
    (with ``scope.hidden``, together with the hidden channels; see the module docstring).

    Sparsities are cumulative relative to ``original`` (default: ``arch``, i.e. one-shot); the
    budgets say what to remove from ``arch`` now. Returns the smallest S whose removal reaches the
    target (bisection; removal is monotone in S) and the per-layer budgets. Raises if even the
    maximum sparsity cannot reach it.
    """
    ids = scope.layer_ids(len(arch.layers))
    if not ids:
        raise SculptError("the layer range selects no layers")
    offsets = offsets or {}
    base = original or arch
    if len(base.layers) != len(arch.layers):
        raise SculptError("original and current architectures have different layer counts")

    def at(s: float, width: int | None) -> Architecture:
        """``arch`` at the hidden width to count with: ``width`` if fixed, else the one ``s`` gives."""
        if not scope.hidden:
            return arch
        width = hidden_width(arch, base, s, scope) if width is None else width
        return arch if width == arch.hidden else replace(arch, hidden=width)

    def budgets(s: float, width: int | None = None) -> Budgets:
        a = at(s, width)
        out = Budgets({
            i: counts_for_sparsity(
                a, a.layers[i], s - offsets.get(i, 0.0), scope, base.layers[i],
                scores.layers[i] if scores is not None else None,
            )
            for i in ids
        })
        tie_budgets(a, out, scope)  # --serve: equal shapes where the runtime needs them
        out.hidden = a.hidden if a.hidden != arch.hidden else None
        return out

    def removed(s: float, width: int | None = None) -> int:
        stem = arch.param_count() - at(s, width).param_count() if scope.hidden else 0
        return stem + sum(b.removed_params for b in budgets(s, width).values())

    def smallest(width: int | None) -> float:
        lo, hi = -top, top
        for _ in range(60):
            mid = (lo + hi) / 2
            if removed(mid, width) >= remove:
                hi = mid
            else:
                lo = mid
        return hi

    top = 1.0 + max([abs(v) for v in offsets.values()] + [0.0])
    if removed(top) < remove:
        raise SculptError(
            f"cannot remove {remove:,} parameters from the selected layers (at most {removed(top):,}); "
            "lower the ratio, widen the layer range or allow more structure types"
        )
    width = hidden_width(arch, base, smallest(None), scope) if scope.hidden else None
    hi = smallest(width)
    found = budgets(hi, width)
    if scope.round_to > 1 and scope.mlp and not serve_rules(arch, scope.serve).tie_mlp:  # tied: already allowed
        a = at(hi, width)
        _round_mlp(a, found, remove - (arch.param_count() - a.param_count()), scope)
    return hi, found


def _round_mlp(arch: Architecture, budgets: dict[int, LayerBudget], remove: int, scope: PruneScope) -> None:
    """Move every budget's kept MLP width to a multiple of ``round_to`` (rounding.apportion), so the
    total removal is as near ``remove`` as the multiples allow."""
    per_channel = 3 * arch.hidden + (2 if arch.mlp_bias else 0)
    ideal = {i: arch.layers[i].mlp - b.mlp_channels for i, b in budgets.items()}
    options = {i: allowed(arch.layers[i].mlp, scope.round_to) for i in budgets}
    excess = remove - sum(b.removed_params for b in budgets.values())
    keep = apportion(ideal, options, dict.fromkeys(budgets, per_channel), excess)
    for i, b in budgets.items():
        channels = arch.layers[i].mlp - keep[i]
        b.removed_params += (channels - b.mlp_channels) * per_channel
        b.mlp_channels = channels


def _lowest(scores: torch.Tensor, k: int) -> set[int]:
    if k <= 0:
        return set()
    order = torch.argsort(scores.float(), stable=True)
    return set(order[:k].tolist())


def select_plan(arch: Architecture, scores: GroupScores, budgets: dict[int, LayerBudget], scope: PruneScope) -> Plan:
    """Keep everything except, per layer, the lowest-scored attention units and MLP channels (and
    the lowest-scored hidden channels down to ``budgets.hidden``)."""
    plan = Plan.keep_all(arch)
    width = getattr(budgets, "hidden", None)
    if width is not None and width < arch.hidden:
        if scores.hidden is None:
            raise SculptError("pruning hidden channels needs hidden-channel scores (score_groups(..., hidden=True))")
        drop = _lowest(scores.hidden, arch.hidden - width)
        plan.hidden = [d for d in range(arch.hidden) if d not in drop]
    for i, b in budgets.items():
        ls, lp, sc = arch.layers[i], plan.layers[i], scores.layers[i]
        if b.attn_units:
            if scope.attn_unit == "kv":
                drop_kv = _lowest(sc.kv, b.attn_units)
                lp.kv_heads = [j for j in range(ls.n_kv) if j not in drop_kv]
                lp.heads = [h for h in range(ls.n_heads) if ls.kv_map[h] not in drop_kv]
            else:
                keep = []
                for j in range(ls.n_kv):
                    members = ls.heads_of(j)
                    drop = _lowest(sc.heads[members], b.attn_units)
                    keep += [h for n, h in enumerate(members) if n not in drop]
                lp.heads = sorted(keep)
                lp.kv_heads = list(range(ls.n_kv))
        if b.mlp_channels:
            drop = _lowest(sc.mlp, b.mlp_channels)
            lp.mlp = [c for c in range(ls.mlp) if c not in drop]
    return plan
