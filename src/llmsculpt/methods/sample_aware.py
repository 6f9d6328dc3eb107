"""AdaPruner's pruning step with a chosen recipe: which pool samples calibrate, and how the
importance terms mix. ``sculpt search`` writes such a recipe (best.yaml); ``sculpt prune --config
best.yaml`` replays it and reproduces the best trial.

Options: ``samples`` (pool indices), ``pool_size``, ``pool_seed``, ``alpha1``, ``alpha2``,
``lambda1``, ``lambda2``. The pool is rebuilt from ``data.calib`` (seq_len, pool_seed) exactly as
the search built it.
"""

from __future__ import annotations

from llmsculpt.errors import SculptError
from llmsculpt.importance.adapruner import mix, sample_terms
from llmsculpt.methods.base import METHODS, PruneContext, PruneResult
from llmsculpt.methods.oneshot import plan_step, scope_of
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan

REQUIRED = ("samples", "pool_size", "pool_seed", "alpha1", "alpha2", "lambda1", "lambda2")


def pool_for(tokenizer, config, pool_size: int, pool_seed: int, calib_text: str | None = None):
    from llmsculpt.calibration import calibration_pool

    kw = {"texts": [calib_text]} if calib_text is not None else {"source": config.data.calib}
    return calibration_pool(tokenizer, pool_size=pool_size, seq_len=config.data.seq_len, seed=pool_seed, **kw)


def prune_with_terms(model, terms, config, *, alpha1, alpha2, lambda1, lambda2):
    """Mix, allocate uniformly (LLM-Pruner style) and apply; returns (plan, sparsity, per-layer)."""
    arch = architecture(model)
    scores = mix(terms, alpha1=alpha1, alpha2=alpha2, lambda1=lambda1, lambda2=lambda2)
    plan, s, per_layer = plan_step(arch, scores, config.removal_target(arch.param_count()), scope_of(config, len(arch.layers)))
    apply_plan(model, plan)
    return plan, s, per_layer


@METHODS.register("sample_aware")
def sample_aware(ctx: PruneContext) -> PruneResult:
    opts = ctx.config.options
    missing = [k for k in REQUIRED if k not in opts]
    if missing:
        raise SculptError(f"sample_aware needs options {', '.join(missing)} (write them with `sculpt search`)")
    pool = pool_for(ctx.tokenizer, ctx.config, int(opts["pool_size"]), int(opts["pool_seed"]), opts.get("calib_text"))
    idx = sorted(set(int(i) for i in opts["samples"]))
    if not idx or max(idx) >= len(pool):
        raise SculptError(f"sample indices must be in [0, {len(pool)})")
    terms = [sample_terms(ctx.model, pool[i]) for i in idx]
    plan, s, per_layer = prune_with_terms(
        ctx.model, terms, ctx.config, alpha1=float(opts["alpha1"]), alpha2=float(opts["alpha2"]),
        lambda1=float(opts["lambda1"]), lambda2=float(opts["lambda2"]),
    )
    return PruneResult(plan=plan, history={"samples": idx, "sparsity": s})
