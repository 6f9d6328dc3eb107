"""The three mini-group types as candidates for one pruning step, and the plan that removes them.

With ``round_to`` N > 1 every width a step changes is a multiple of N (allocation/rounding.py):
hidden (stem) and MLP widths, and kept query heads × head_dim. A step first takes the
lowest-saliency units up to its budget, as without rounding. It then moves each layer's kept count
to the allowed count just below or above, apportioned so the step removes as near its budget as the
multiples allow. If that rounds the whole step away, the step removes the smallest allowed amount
instead, so a run always progresses to its target; it may end up to one such amount below it.
"""

from __future__ import annotations

from collections import Counter

from llmsculpt.allocation.rounding import allowed, apportion, head_step
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


def candidates(
    sal: Saliency, arch: Architecture, kind: str, budget: float, *, round_to: int = 1
) -> tuple[list[tuple], float]:
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
    taken, mean = _lowest_until(scores, budget, size, ok)
    step = head_step(round_to, arch.head_dim) if kind == "attention" else round_to
    if step == 1:
        return taken, mean
    return _rounded(scores, taken, arch, kind, budget, size, step)


def _rounded(scores, taken, arch: Architecture, kind: str, budget: float, size: float, step: int):
    """``taken`` with every layer's kept count moved to an allowed one (see the module docstring)."""
    if kind == "stem":
        current, part = {0: arch.hidden}, lambda key: 0  # noqa: E731
    else:
        current = {i: ls.n_heads if kind == "attention" else ls.mlp for i, ls in enumerate(arch.layers)}
        part = lambda key: key[0]  # noqa: E731
    ranked: dict[int, list[tuple[float, tuple]]] = {i: [] for i in current}
    for value, key in sorted(scores, key=lambda s: s[0]):
        ranked[part(key)].append((value, key))
    options = {i: allowed(c, step) for i, c in current.items()}
    gone = Counter(part(key) for key in taken)
    ideal = {i: current[i] - gone[i] for i in current}
    keep = apportion(ideal, options, dict.fromkeys(current, size), budget - len(taken) * size)
    if taken and keep == current:  # rounded away: the smallest allowed removal, cheapest first
        smallest = []
        for i in current:
            below = [o for o in options[i] if o < current[i]]
            if below:
                n = current[i] - below[-1]
                smallest.append((n, sum(v for v, _ in ranked[i][:n]), i))
        if smallest:
            n, _, i = min(smallest)
            keep[i] = current[i] - n
    chosen = sorted((item for i in current for item in ranked[i][: current[i] - keep[i]]), key=lambda s: s[0])
    return [key for _, key in chosen], sum(v for v, _ in chosen) / max(1, len(chosen))


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
