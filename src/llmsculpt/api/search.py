"""The ``search`` verb: AdaPruner's Bayesian search (TPE) over calibration samples and the importance
mix; writes ``best.yaml`` (a prune recipe) and ``recipe.yaml`` (this search's) into the study."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from llmsculpt.api._common import RECIPE_FILE, has_matplotlib, is_main, model_and_tokenizer, recipe
from llmsculpt.config import PruneConfig, SearchConfig
from llmsculpt.errors import SculptError


@dataclass
class SearchOutcome:
    """The best prune recipe found, its perplexity, where the study lives and the effective recipe."""

    best: PruneConfig
    best_value: float
    best_sampler: str
    best_trial: int
    seconds_per_trial: float
    cache_seconds: float
    study: Path
    recipe: SearchConfig


def search(model: str | os.PathLike | nn.Module | None = None, *, study: str | os.PathLike,
           config: SearchConfig | None = None, tokenizer=None, device=None, progress: bool = False,
           **fields) -> SearchOutcome:
    """Search ``trials`` prune recipes (samples × importance mix) for the lowest perplexity; the
    study in ``study`` resumes when it exists. ``sculpt prune --config <study>/best.yaml`` replays the best.

    Example:
        >>> r = search("tiny-llama", study="st", ratio=0.2, trials=4, n_samples=2, pool_size=4)  # doctest: +SKIP
        >>> r.best.method  # doctest: +SKIP
        'sample_aware'
    """
    from llmsculpt.errors import require
    from llmsculpt.io.files import read_text
    from llmsculpt.io.save import atomic_file, check_writable
    from llmsculpt.search import outputs
    from llmsculpt.search.study import Objective, SearchSetup, run_study

    cfg = recipe(SearchConfig, config, model, fields)
    require("optuna", extra="search", feature="sculpt search")
    if cfg.eval_text:
        texts = [read_text(p) for p in cfg.eval_text]
    else:
        from llmsculpt.calibration import default_documents

        texts = ["\n\n".join(default_documents("heldout"))]
    study_dir = check_writable(study)
    model, tokenizer, _ = model_and_tokenizer(model, tokenizer, cfg, device=device)
    setup = SearchSetup(model, tokenizer, cfg.prune_config(), texts, pool_size=cfg.pool_size,
                        n_samples=cfg.n_samples, eval_windows=cfg.eval_windows)
    if progress:
        print(f"computing per-sample importance for {cfg.pool_size} candidates...")
    objective = Objective(setup)
    if progress:
        print(f"cached in {objective.cache_seconds:.1f}s")
    studies = {}
    for sampler in (["tpe", "random"] if cfg.sampler == "both" else [cfg.sampler]):
        studies[sampler] = run_study(objective, study_dir, sampler=sampler, trials=cfg.trials, timeout=cfg.timeout,
                                     seed=cfg.seed)
        if is_main():
            outputs.write_trials(studies[sampler], study_dir, sampler)
    best_tag, best = min(((k, s) for k, s in studies.items() if outputs.completed(s)), key=lambda kv: kv[1].best_value,
                         default=(None, None))
    if best is None:
        raise SculptError("no trial finished; see trials_*.json for the failures")
    best_recipe = objective.recipe(best.best_params)
    if is_main():
        with atomic_file(study_dir / "best.yaml") as tmp:
            best_recipe.to_yaml(tmp)
        with atomic_file(study_dir / RECIPE_FILE) as tmp:
            cfg.to_yaml(tmp)
        if has_matplotlib():
            outputs.plot_history(studies, study_dir)
            outputs.plot_importances(best, study_dir)
    secs = [t.user_attrs.get("seconds") for s in studies.values() for t in s.trials if t.user_attrs.get("seconds")]
    return SearchOutcome(best=best_recipe, best_value=best.best_value, best_sampler=best_tag,
                         best_trial=best.best_trial.number, seconds_per_trial=sum(secs) / max(1, len(secs)),
                         cache_seconds=objective.cache_seconds, study=study_dir, recipe=cfg)
