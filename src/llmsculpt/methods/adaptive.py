"""Adapt-Pruner: layer-wise adaptive sparsity, in many small steps.

Every step re-measures, on the *current* model, each layer's importance (how much it changes its
input) and the Taylor importance of every head/channel, in one forward+backward pass; each layer's
sparsity then grows by the common increment minus a·δ·Î_i, *cumulatively* as in the paper
(allocation/adaptive.py), and the layer loses its lowest-scored K/V groups (or heads) and MLP
channels. The removal target grows linearly from 0 to the final one over the steps; the exact
solver finds the common increment that hits each step's parameter target. Sparsities are relative
to the layer's original shape, so small steps still remove whole K/V groups once a layer's
sparsity calls for one.

Options (``PruneConfig.options``, parsed into ``AdaptiveOptions``): ``amplitude`` a, relative to the mean per-step increment δ
(a = 1: the most important layer is spared a step's increment, the least loses two), ``steps`` T,
``normalise`` (max | rank | mad | inner; max is the paper's: on smollm2 it spares layer 0 and
prunes the near-identical middle layers alike, which measured best; rank, mad and inner spread the
middle layers by a −cos ordering that is stable across seeds and texts but does not predict the damage),
``cumulative`` (False: only the current step's offset, the old behaviour), ``distance`` (cosine |
euclidean | manhattan), ``resample`` (new calibration samples each step). Defaults (a = 1, T = 5,
max, cumulative) from bench/sweep_adaptive.py: 0.45× iterative uniform's perplexity at 40 %, 0.54× at
50 % (0.69× with calibration seed 1; a = 0.5: 0.48× / 0.69× there but 0.58× at 40 %); on a second
text 0.45× and 0.25×. At 50 % one run's ratio is only good to about ±0.2 (a re-run at one thread:
0.36×, and 0.44× on the second text). More calibration helps iterative uniform more than adaptive:
at 50 % 32×128 gives 0.55× / 1.28× (seeds 0 / 1), the paper's 512×64 0.63× at 20× the time.
A = 0 is iterative uniform; A = 0 with T = 1 is exactly the uniform
method (with the same ``split``). Unless ``split`` is set, a layer's sparsity is met by ranking
K/V groups and MLP channels together by Taylor importance per parameter ("importance" split);
``split=proportional`` is the paper's equal-fraction split (both parts lose the layer's fraction,
attention rounded to whole units). With ``hidden`` the hidden width follows the same schedule: each
step it is cut to hidden × S of the original width, S the step's common sparsity. δ stays the
removal ratio of the prunable layers ÷ T, although with hidden the common S ends lower (the
embeddings shrink too): δ from the solver's final S (a smaller a·δ) measured no better on smollm2
at 40 % (held-out ppl with --hidden 1 / 0.5 / 0.25: 5,147 / 1,160 / 411 vs 3,794 / 1,319 / 392).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsculpt.allocation.adaptive import NORMS, accumulate, clip_state, normalise_importance, step_offsets
from llmsculpt.errors import SculptError
from llmsculpt.importance import get_metric
from llmsculpt.importance.groups import score_groups
from llmsculpt.importance.layer_importance import check_distance
from llmsculpt.methods.base import PruneContext, PruneResult, check_options, register, working_copy
from llmsculpt.methods.oneshot import needs_for, plan_step, reducer_for, scope_of
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan


@dataclass
class AdaptiveOptions:
    """Adapt-Pruner's knobs (see the module docstring); defaults from bench/sweep_adaptive.py."""

    amplitude: float = 1.0
    steps: int = 5
    normalise: str = "max"
    cumulative: bool = True
    distance: str = "cosine"
    resample: bool = True

    def __post_init__(self) -> None:
        self.steps, self.amplitude = int(self.steps), float(self.amplitude)
        if self.steps < 1:
            raise SculptError(f"steps must be >= 1, got {self.steps}")
        if self.amplitude < 0:
            raise SculptError(f"amplitude must be >= 0, got {self.amplitude}")
        if self.normalise not in NORMS:
            raise SculptError(f"normalise must be one of {', '.join(NORMS)}, got {self.normalise!r}")
        check_distance(self.distance)


@register("adaptive", options=AdaptiveOptions)
def adaptive(ctx: PruneContext) -> PruneResult:
    """Prunes a working copy step by step (``ctx.model`` itself when ``ctx.inplace``), returned as
    ``working``; the plan is the steps' composition, relative to ``ctx.model`` as given."""
    opts = check_options("adaptive", ctx.config.options)
    cfg, engine = ctx.config, ctx.engine
    model = working_copy(ctx)
    steps, amplitude = opts.steps, opts.amplitude
    arch0 = architecture(model)
    start = arch0.param_count()
    total = cfg.removal_target(start)
    scope = scope_of(cfg, len(arch0.layers), default_split="importance")
    ids = scope.layer_ids(len(arch0.layers))
    metric = get_metric(cfg.metric)
    hidden = bool(cfg.hidden)
    needs = needs_for(metric, hidden=hidden, layer_change=opts.distance)  # layer importance: at least a forward pass
    composed = Plan.keep_all(arch0)
    prunable = sum(arch0.layer_params(arch0.layers[i]) for i in ids)
    delta = total / max(1, prunable) / steps  # mean per-step sparsity increment δ
    offsets: dict[int, float] = {}  # cumulative: layer i's sparsity is S − offsets[i]
    history: dict = {"steps": [], "amplitude": amplitude, "increment": delta, "layers": ids,
                     "distance": opts.distance, "normalise": opts.normalise, "cumulative": opts.cumulative}
    bar = _progress(ctx.progress, steps)
    for t in range(1, steps + 1):
        cur = architecture(model)
        remove = cur.param_count() - (start - round(total * t / steps))
        if remove <= 0:
            bar.update(1)
            continue
        batch = ctx.calibration(cfg.seed + (t - 1 if opts.resample else 0))
        measured = engine.measure(model, batch, needs, reducer=reducer_for(model, metric, hidden=hidden))
        raw = measured.layer
        plan = None
        if engine.decides:
            norm = normalise_importance(raw, ids, opts.normalise)
            scores = score_groups(model, measured, metric, aggregation=cfg.aggregation, hidden=hidden)
            now = step_offsets(norm, ids, amplitude, delta)
            trial = accumulate(offsets, now) if opts.cumulative else now
            plan, s, per_layer = plan_step(cur, scores, remove, scope, trial, original=arch0)
            offsets = clip_state(trial, s) if opts.cumulative else {}
        measured.free_grads()  # (none are kept: the reducer turned them into scores during the pass)
        plan = engine.agree(plan)
        apply_plan(model, plan)
        engine.applied(model)
        composed = composed.compose(plan)
        arch = architecture(model)
        params = arch.param_count()
        if engine.decides:
            history["steps"].append({
                "step": t,
                "params": params,
                "loss": measured.loss,
                "importance": raw.tolist(),
                "importance_norm": norm.tolist(),
                "sparsity": {i: min(max(s - trial[i], 0.0), 0.99) for i in ids},
                "layer_sparsity": _layer_sparsity(arch, arch0, ids),
                "per_layer": per_layer,
                **({"hidden": arch.hidden} if hidden else {}),
            })
        bar.set_postfix(params=f"{params / 1e6:.2f}M", loss=f"{measured.loss:.3f}")
        bar.update(1)
    bar.close()
    return PruneResult(plan=composed, history=history, working=model)


def _layer_sparsity(arch, original, ids: list[int]) -> dict[int, float]:
    """Realised fraction of each layer's parameters removed so far (relative to ``original``)."""
    return {i: 1 - arch.layer_params(arch.layers[i]) / original.layer_params(original.layers[i]) for i in ids}


def _progress(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="adaptive pruning", unit="step", disable=not enabled)
