"""The three mini-group types as candidates for one pruning step, and the plan that removes them."""

from __future__ import annotations

from llmsculpt.plan import Plan
from llmsculpt.pretrain.saliency import Saliency, unit_params
from llmsculpt.structures.shapes import Architecture


def _lowest_until(scores: list[tuple[float, tuple]], budget: float, size: float, limit_ok) -> tuple[list[tuple], float]:
    """Take the lowest-scored units (respecting ``limit_ok``) until ``budget`` parameters."""
    taken, total = [], 0.0
    for value, key in sorted(scores, key=lambda s: s[0]):
        if total >= budget:
            break
        if not limit_ok(key, taken):
            continue
        taken.append(key)
        total += size
    mean = sum(v for v, k in scores if k in set(taken)) / max(1, len(taken))
    return taken, mean


def candidates(sal: Saliency, arch: Architecture, kind: str, budget: float) -> tuple[list[tuple], float]:
    """The units of ``kind`` a pruning step would remove, and their mean saliency per parameter."""
    size = unit_params(arch)[kind]
    if kind == "attention":
        scores = [(float(v), (i, h)) for i, t in enumerate(sal.heads) for h, v in enumerate(t.tolist())]
        per_layer = {i: ls.n_heads for i, ls in enumerate(arch.layers)}
        ok = lambda key, taken: sum(1 for k in taken if k[0] == key[0]) < per_layer[key[0]] - 1  # noqa: E731
    elif kind == "mlp":
        scores = [(float(v), (i, c)) for i, t in enumerate(sal.mlp) for c, v in enumerate(t.tolist())]
        per_layer = {i: ls.mlp for i, ls in enumerate(arch.layers)}
        ok = lambda key, taken: sum(1 for k in taken if k[0] == key[0]) < per_layer[key[0]] - 1  # noqa: E731
    else:
        scores = [(float(v), (d,)) for d, v in enumerate(sal.stem.tolist())]
        ok = lambda key, taken: len(taken) < arch.hidden - 1  # noqa: E731
    return _lowest_until(scores, budget, size, ok)


def plan_for(arch: Architecture, kind: str, units: list[tuple]) -> Plan:
    """The plan removing ``units`` of one mini-group type. Heads go one by one (cluster attention):
    a K/V head stays while any of its query heads does."""
    plan = Plan.keep_all(arch)
    if kind == "stem":
        gone = {u[0] for u in units}
        plan.hidden = [d for d in range(arch.hidden) if d not in gone]
        return plan
    for i, ls in enumerate(arch.layers):
        gone = {u[1] for u in units if u[0] == i}
        if not gone:
            continue
        lp = plan.layers[i]
        if kind == "attention":
            lp.heads = [h for h in range(ls.n_heads) if h not in gone]
            lp.kv_heads = sorted({ls.kv_map[h] for h in lp.heads})
        else:
            lp.mlp = [c for c in range(ls.mlp) if c not in gone]
    return plan
