"""EfficientLLM's pruning step as a planner: saliency of the three mini-group types (attention
heads, MLP channels, hidden "stem" channels), the cheapest type's units, and the plan removing them.

``plan_step`` measures a training batch with the engine, decides on the deciding process which type
and units go (lowest saliency per parameter, or a fixed type order for ablations) and returns the
step's plan, OBS updates inside it, agreed on every process; the run engine (run/pruning_aware.py)
applies it between training steps.

With ``round_to`` N > 1 every width a step changes is a multiple of N (allocation/rounding.py):
hidden (stem) and MLP widths, and kept query heads × head_dim. A step first takes the
lowest-saliency units up to its budget, as without rounding. It then moves each layer's kept count
to the allowed count just below or above, apportioned so the step removes as near its budget as the
multiples allow. If that rounds the whole step away, the step removes the smallest allowed amount
instead, so a run always progresses to its target; it may end up to one such amount below it. A
step can then free more than its quantum, so it chooses among the types whose step still fits in
the parameters left above the target, or, if none fits, takes the type that overshoots least.
"""

from __future__ import annotations

from collections import Counter

from llmsculpt.allocation.rounding import allowed, apportion, head_step
from llmsculpt.allocation.serving import ServeRules, check_servable, serve_rules, tied_units
from llmsculpt.config import PretrainPruneConfig
from llmsculpt.config.base import round_to_for
from llmsculpt.errors import SculptError
from llmsculpt.importance.obs import obs_updates
from llmsculpt.importance.saliency import HESSIAN_METRICS, Saliency, saliency, unit_params
from llmsculpt.measure import Needs
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import Architecture, architecture, count_params

__all__ = ["candidates", "choose", "plan_for", "plan_step"]


def plan_step(engine, model, batch, cfg: PretrainPruneConfig, *, quantum: float, prune_done: int) -> tuple[Plan, dict]:
    """One pruning step's plan for ``model`` (not applied) and its log entry
    {"loss", "type", "removed", "saliency"}: ``batch`` (a training share) is measured with
    ``engine``, the deciding process chooses, and every process gets its plan."""
    params = count_params(model)
    arch = architecture(model)
    check_servable(model, cfg.serve)
    hessian_metric = cfg.metric in HESSIAN_METRICS
    needs = Needs(grad=not hessian_metric, grad_params="saliency", forward=True,
                  hessians=("all" if hessian_metric else "outputs") if cfg.obs or hessian_metric else None)
    m = engine.measure(model, batch, needs)
    plan = None
    if engine.decides:
        sal = saliency(model, arch, cfg.metric, grads=m.grad, hessians=m.hessians)
        m.free_grads()
        kind, units, scores = choose(sal, arch, cfg, budget=min(quantum, params - cfg.target_params),
                                     left=params - cfg.target_params, prune_done=prune_done)
        plan = plan_for(arch, kind, units)
        if cfg.obs and kind in ("attention", "mlp"):
            plan.updates = obs_updates(model, arch, kind, units, m.hessians)
        plan.meta["step"] = {"type": kind, "removed": len(units), "saliency": scores}
    plan = engine.agree(plan)
    step = plan.meta.pop("step")
    return plan, {"loss": m.loss, **step}


def choose(sal: Saliency, arch: Architecture, cfg: PretrainPruneConfig, *, budget: float, left: float,
           prune_done: int) -> tuple[str, list[tuple], dict[str, float]]:
    """The step's mini-group type, its units and every candidate type's mean saliency per parameter.
    ``budget``: parameters this step should remove; ``left``: parameters still above the target."""
    types = [t for t in cfg.types if not (t == "stem" and arch.hidden <= 1)]
    round_to, rules = round_to_for(cfg.round_to, cfg.serve), serve_rules(arch, cfg.serve)
    options = {t: candidates(sal, arch, t, budget, round_to=round_to, rules=rules) for t in types}
    if cfg.fixed_order:
        kind = cfg.fixed_order[prune_done % len(cfg.fixed_order)]
        if kind not in options:
            options[kind] = candidates(sal, arch, kind, budget, round_to=round_to, rules=rules)
    else:
        usable = [t for t in options if options[t][0]]
        if not usable:
            raise SculptError("nothing left to prune: every layer is down to one head and one channel")
        if round_to > 1 or rules.ties:  # multiples / tied layers make steps coarse: keep to types that fit
            size = unit_params(arch)
            freed = {t: len(options[t][0]) * size[t] for t in usable}
            fits = [t for t in usable if freed[t] <= left]
            usable = fits or [min(usable, key=lambda t: (freed[t], options[t][1]))]
        kind = min(usable, key=lambda t: options[t][1])
    return kind, [tuple(u) for u in options[kind][0]], {t: options[t][1] for t in options}


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
    sal: Saliency, arch: Architecture, kind: str, budget: float, *, round_to: int = 1, rules: ServeRules | None = None
) -> tuple[list[tuple], float]:
    """The units of ``kind`` a pruning step would remove, and their mean saliency per parameter; with
    ``rules`` that tie this kind (``--serve``), the same count from every layer (allocation/serving.py)."""
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
    if rules is not None and (rules.tie_attention if kind == "attention" else kind == "mlp" and rules.tie_mlp):
        return tied_units(scores, arch, kind, budget, size, round_to=round_to)
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
