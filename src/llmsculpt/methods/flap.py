"""FLAP (Fluctuation-based Adaptive Structured Pruning), as a baseline.

1. One forward pass over the calibration data collects mean and variance of every o_proj and
   down_proj input channel.
2. Fluctuation scores: per attention unit (K/V group, or query head with ``attn_unit=head``) the
   sum over its o_proj input channels; per MLP channel its down_proj input channel.
3. Scores are standardised per structure type over all prunable layers, and units/channels are
   removed globally, lowest first, until the parameter target is met (adaptive across layers and
   modules; at least one unit/channel stays in every layer).
4. Bias compensation: the removed channels' mean contribution W[:, removed] · E[x_removed] becomes a
   bias of o_proj / down_proj, so each layer's output is unchanged in expectation. The biases are
   weight updates inside the plan (``add`` to every layer's o_proj / down_proj bias), which surgery
   applies after the selection, creating the biases. Llama-family
   configs cannot express "bias on o_proj/down_proj only", so the model is saved with llmsculpt's
   config (``sculpt_output_bias``), loading via ``llmsculpt.load`` or trust_remote_code; the
   biases cost 2 × hidden parameters per layer (counted in the report).

With ``round_to`` N > 1 the global ranking's per-layer counts are then rounded
(allocation/rounding.py): each layer's attention to the nearest allowed unit count, and the MLP
widths to multiples of N, apportioned so the total stays as near the target as the multiples
allow. Within a layer, the lowest-scored units and channels still go.
"""

from __future__ import annotations

import torch

from llmsculpt.allocation.rounding import allowed, apportion, head_step, nearest
from llmsculpt.allocation.serving import tie_drop
from llmsculpt.importance.fluctuation import fluctuation, standardise
from llmsculpt.measure import Needs
from llmsculpt.methods.base import PruneContext, PruneResult, check_options, register
from llmsculpt.methods.oneshot import scope_of
from llmsculpt.models.spec import spec_for
from llmsculpt.plan import Plan, Update
from llmsculpt.structures.shapes import architecture


@register("flap")
def flap(ctx: PruneContext) -> PruneResult:
    check_options("flap", ctx.config.options)
    model, cfg = ctx.model, ctx.config
    spec = spec_for(model)
    arch = architecture(model)
    scope = scope_of(cfg, len(arch.layers))
    ids = scope.layer_ids(len(arch.layers))
    h, hd = arch.hidden, arch.head_dim
    moments = ctx.engine.measure(model, ctx.calibration(cfg.seed), Needs(moments=True)).moments
    candidates = []  # (standardised score, layer, kind, index, params)

    def layer_scores(i: int, layer) -> tuple[torch.Tensor, torch.Tensor] | None:
        if i not in ids:
            return None
        _, _, _, o = spec.qkvo(layer)
        _, _, down = spec.gate_up_down(layer)
        ls = arch.layers[i]
        per_head = fluctuation(o.weight, moments.attn[i]).view(ls.n_heads, hd).sum(1)
        if scope.attn_unit == "kv":
            per_head = torch.zeros(ls.n_kv).index_add_(0, torch.tensor(ls.kv_map), per_head)
        return per_head, fluctuation(down.weight, moments.mlp[i])

    scored = ctx.engine.each_layer(model, layer_scores)  # weights resident one layer at a time if need be
    attn_scores = {i: scored[i][0] for i in ids}
    mlp_scores = {i: scored[i][1] for i in ids}
    attn_all = standardise(torch.cat([attn_scores[i] for i in ids])) if scope.attention else None
    mlp_all = standardise(torch.cat([mlp_scores[i] for i in ids])) if scope.mlp else None
    a_off = m_off = 0
    for i in ids:
        ls = arch.layers[i]
        rep = ls.n_heads // ls.n_kv
        unit_params = (2 * rep + 2) * h * hd if scope.attn_unit == "kv" else 2 * h * hd
        if attn_all is not None:
            for j, v in enumerate(attn_all[a_off : a_off + len(attn_scores[i])].tolist()):
                candidates.append((v, i, "attn", j, unit_params))
            a_off += len(attn_scores[i])
        if mlp_all is not None:
            for j, v in enumerate(mlp_all[m_off : m_off + ls.mlp].tolist()):
                candidates.append((v, i, "mlp", j, 3 * h))
            m_off += ls.mlp
    remove = cfg.removal_target(arch.param_count())
    bias_cost = len(arch.layers) * 2 * h  # compensation biases added below
    drop = _choose(candidates, remove + bias_cost, arch, scope.attn_unit)
    drop = tie_drop(drop, candidates, remove + bias_cost, arch, scope)  # --serve vllm: one head count
    if scope.round_to > 1:
        drop = _round_drop(drop, candidates, remove + bias_cost, arch, scope)
    plan = _plan_from(arch, drop, scope.attn_unit)
    compensation = ctx.engine.each_layer(model, lambda i, layer: _compensation(spec, layer, arch.layers[i], plan.layers[i],
                                                                             moments, i, hd))
    for i, (o_bias, down_bias) in enumerate(compensation):
        plan.updates += [Update(layer=i, module="o_proj", param="bias", op="add", value=o_bias),
                         Update(layer=i, module="down_proj", param="bias", op="add", value=down_bias)]
    return PruneResult(plan=plan, history={"removed_units": {k: len(v) for k, v in drop.items()}, "bias_params": bias_cost})


def _choose(candidates, remove: int, arch, unit: str) -> dict[tuple[int, str], list[int]]:
    """Lowest standardised score first until ``remove`` params; never the last unit/channel."""
    drop: dict[tuple[int, str], list[int]] = {}
    removed = 0
    for score, i, kind, j, params in sorted(candidates, key=lambda c: c[0]):
        if removed >= remove:
            break
        ls = arch.layers[i]
        limit = (ls.n_kv if unit == "kv" else ls.n_heads) if kind == "attn" else ls.mlp
        if len(drop.get((i, kind), [])) >= limit - 1:
            continue
        drop.setdefault((i, kind), []).append(j)
        removed += params
    return drop


def _round_drop(drop, candidates, remove: int, arch, scope) -> dict[tuple[int, str], list[int]]:
    """``drop`` with every layer's kept attention and MLP counts moved to allowed ones (rounding
    module), the lowest-scored of each layer going first; the MLP widths apportioned so the total
    removed stays as near ``remove`` as the multiples allow."""
    by_part: dict[tuple[int, str], list[tuple[float, int, int]]] = {}
    for score, i, kind, j, params in candidates:
        by_part.setdefault((i, kind), []).append((score, j, params))
    for part in by_part.values():
        part.sort(key=lambda c: c[0])
    out, removed, mlp_ideal = {}, 0, {}
    for (i, kind), part in by_part.items():
        ls, gone = arch.layers[i], len(drop.get((i, kind), []))
        if kind == "mlp":
            mlp_ideal[i] = ls.mlp - gone
            continue
        kv = scope.attn_unit == "kv"
        n = ls.n_kv if kv else ls.n_heads
        step = head_step(scope.round_to, arch.head_dim, ls.n_heads // ls.n_kv if kv else 1)
        uneven = kv and step > 1 and not ls.is_grouped_evenly  # K/V groups of different sizes: leave them
        keep = n if uneven else nearest(n - gone, allowed(n, step))
        out[(i, kind)] = [j for _, j, _ in part[: n - keep]]
        removed += sum(p for _, _, p in part[: n - keep])
    if mlp_ideal:
        cost = {i: by_part[(i, "mlp")][0][2] for i in mlp_ideal}
        removed += sum((arch.layers[i].mlp - m) * cost[i] for i, m in mlp_ideal.items())
        options = {i: allowed(arch.layers[i].mlp, scope.round_to) for i in mlp_ideal}
        keep = apportion(mlp_ideal, options, cost, remove - removed)
        for i, k in keep.items():
            out[(i, "mlp")] = [j for _, j, _ in by_part[(i, "mlp")][: arch.layers[i].mlp - k]]
    return {part: gone for part, gone in out.items() if gone}


def _plan_from(arch, drop, unit: str) -> Plan:
    plan = Plan.keep_all(arch)
    for (i, kind), gone in drop.items():
        ls, lp = arch.layers[i], plan.layers[i]
        if kind == "mlp":
            lp.mlp = [c for c in range(ls.mlp) if c not in set(gone)]
        elif unit == "kv":
            lp.kv_heads = [j for j in range(ls.n_kv) if j not in set(gone)]
            lp.heads = [q for q in range(ls.n_heads) if ls.kv_map[q] not in set(gone)]
        else:  # query heads: a K/V head stays while it serves any kept head (cluster attention)
            lp.heads = [q for q in range(ls.n_heads) if q not in set(gone)]
            lp.kv_heads = sorted({ls.kv_map[q] for q in lp.heads})
    return plan


def _compensation(spec, layer, ls, lp, moments, i: int, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``i``'s W[:, removed] @ E[x_removed] for o_proj and down_proj, from its dense weights."""
    _, _, _, o = spec.qkvo(layer)
    _, _, down = spec.gate_up_down(layer)
    kept_heads = set(lp.heads) if lp.heads is not None else set(range(ls.n_heads))
    cols_o = [q * hd + d for q in range(ls.n_heads) if q not in kept_heads for d in range(hd)]
    kept_mlp = set(lp.mlp) if lp.mlp is not None else set(range(ls.mlp))
    cols_d = [c for c in range(ls.mlp) if c not in kept_mlp]
    return (_mean_contribution(o.weight, moments.attn[i].mean, cols_o),
            _mean_contribution(down.weight, moments.mlp[i].mean, cols_d))


def _mean_contribution(weight: torch.Tensor, mean: torch.Tensor, cols: list[int]) -> torch.Tensor:
    if not cols:
        return torch.zeros(weight.shape[0])
    idx = torch.tensor(cols)
    with torch.no_grad():
        return (weight.detach().float().cpu()[:, idx] @ mean.float()[idx]).cpu()
