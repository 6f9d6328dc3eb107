"""AdaPruner's pruning step with a chosen recipe: which pool samples calibrate, and how the
importance terms mix. ``sculpt search`` writes such a recipe (best.yaml); ``sculpt prune --config
best.yaml`` replays it and reproduces the best trial.

Options: ``samples`` (pool indices), ``pool_size``, ``pool_seed``, ``alpha1``, ``alpha2``,
``lambda1``, ``lambda2`` (and ``calib_text``), parsed into ``SampleAwareOptions``. The pool is rebuilt from ``data.calib`` (seq_len, pool_seed) exactly as
the search built it.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsculpt.errors import SculptError
from llmsculpt.importance.adapruner import mix, sample_terms
from llmsculpt.methods.base import PruneContext, PruneResult, check_options, register
from llmsculpt.methods.oneshot import plan_step, scope_of
from llmsculpt.structures.shapes import Architecture, architecture

REQUIRED = ("samples", "pool_size", "pool_seed", "alpha1", "alpha2", "lambda1", "lambda2")


@dataclass
class SampleAwareOptions:
    """The recipe ``sculpt search`` writes: which pool samples calibrate and how the terms mix."""

    samples: list[int] | None = None
    pool_size: int | None = None
    pool_seed: int | None = None
    alpha1: float | None = None
    alpha2: float | None = None
    lambda1: float | None = None
    lambda2: float | None = None
    calib_text: str | None = None

    def __post_init__(self) -> None:
        missing = [k for k in REQUIRED if getattr(self, k) is None]
        if missing:
            raise SculptError(f"sample_aware needs options {', '.join(missing)} (write them with `sculpt search`)")
        self.samples = sorted(set(int(i) for i in self.samples))
        self.pool_size, self.pool_seed = int(self.pool_size), int(self.pool_seed)
        for k in ("alpha1", "alpha2", "lambda1", "lambda2"):
            setattr(self, k, float(getattr(self, k)))


def pool_for(tokenizer, config, pool_size: int, pool_seed: int, calib_text: str | None = None):
    from llmsculpt.calibration import calibration_pool

    kw = {"texts": [calib_text]} if calib_text is not None else {"source": config.data.calib}
    return calibration_pool(tokenizer, pool_size=pool_size, seq_len=config.data.seq_len, seed=pool_seed, **kw)


def plan_with_terms(arch: Architecture, terms, config, *, alpha1, alpha2, lambda1, lambda2):
    """Mix and allocate uniformly (LLM-Pruner style); returns (plan, sparsity, per-layer)."""
    scores = mix(terms, alpha1=alpha1, alpha2=alpha2, lambda1=lambda1, lambda2=lambda2)
    return plan_step(arch, scores, config.removal_target(arch.param_count()), scope_of(config, len(arch.layers)))


@register("sample_aware", options=SampleAwareOptions)
def sample_aware(ctx: PruneContext) -> PruneResult:
    opts = check_options("sample_aware", ctx.config.options)
    text = opts.calib_text if opts.calib_text is not None else ctx.calib_text  # the recipe's, else the caller's
    pool = pool_for(ctx.tokenizer, ctx.config, opts.pool_size, opts.pool_seed, text)
    idx = opts.samples
    if not idx or max(idx) >= len(pool):
        raise SculptError(f"sample indices must be in [0, {len(pool)})")
    terms = [sample_terms(ctx.model, pool[i], engine=ctx.engine) for i in idx]
    plan, s, per_layer = plan_with_terms(
        architecture(ctx.model), terms, ctx.config, alpha1=opts.alpha1, alpha2=opts.alpha2,
        lambda1=opts.lambda1, lambda2=opts.lambda2,
    )
    return PruneResult(plan=plan, history={"samples": idx, "sparsity": s})
