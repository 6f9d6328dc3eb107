"""The persistent optuna study behind `sculpt search`.

Search space (one trial):
  - calibration data: ``n_samples`` slots, each a categorical index into the candidate pool
    (duplicates collapse). One categorical per slot lets TPE learn, slot by slot, which candidates
    come with low perplexity; a per-sample inclusion mask would make the sample count itself
    random and give TPE 10× more binary parameters to learn from the same trials.
  - importance: α1, α2 ∈ [0, 1]; λ1 (vector scale) and λ2 (second-order scale) log-uniform.
Objective: mean perplexity of the pruned model (no fine-tuning) over the eval texts.

Trials are cheap: per-sample importance terms of the whole pool are computed once (one
forward+backward per candidate) and kept in memory; a trial combines its samples' terms into a
plan, applies it to a copy of the dense model (never the dense model itself), and measures
perplexity. The study lives in
``<study>/study.db`` (sqlite): re-running the same command resumes it; failed trials (NaN, errors)
are recorded as failed and the search goes on.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

from llmsculpt.config import PruneConfig
from llmsculpt.errors import SculptError, require
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.importance.adapruner import sample_terms
from llmsculpt.methods.sample_aware import plan_with_terms, pool_for
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan

LAMBDA1 = (1e-2, 1e2)
LAMBDA2 = (1e-4, 1e4)


@dataclass
class SearchSetup:
    model: object
    tokenizer: object
    config: PruneConfig  # ratio/target, data.seq_len, data.calib, seed
    eval_texts: list[str]
    pool_size: int = 32
    n_samples: int = 10
    eval_windows: int = 16


class Objective:
    def __init__(self, setup: SearchSetup, *, calib_text: str | None = None, progress: bool = False):
        self.setup = setup
        self.calib_text = calib_text
        t0 = time.perf_counter()
        cfg = setup.config
        self.pool = pool_for(setup.tokenizer, cfg, setup.pool_size, cfg.seed, calib_text)
        self.terms = [sample_terms(setup.model, s) for s in self.pool]
        self.cache_seconds = time.perf_counter() - t0
        self.dense = setup.model  # read only: every trial prunes a copy
        self.arch = architecture(setup.model)

    def evaluate(self, samples: list[int], alpha1: float, alpha2: float, lambda1: float, lambda2: float) -> float:
        """Mean perplexity of the dense model pruned with this recipe (deterministic)."""
        idx = sorted(set(samples))
        plan, _, _ = plan_with_terms(self.arch, [self.terms[i] for i in idx], self.setup.config,
                                     alpha1=alpha1, alpha2=alpha2, lambda1=lambda1, lambda2=lambda2)
        model = apply_plan(copy.deepcopy(self.dense), plan)
        ppls = [perplexity(model, self.setup.tokenizer, t, seq_len=self.setup.config.data.seq_len,
                           max_windows=self.setup.eval_windows).ppl for t in self.setup.eval_texts]
        value = sum(ppls) / len(ppls)
        return value if math.isfinite(value) else float("nan")

    def __call__(self, trial) -> float:
        # categorical, not int: pool slots are names, and TPE must not model "nearby" indices as similar
        slots = list(range(len(self.pool)))
        samples = [trial.suggest_categorical(f"sample_{k}", slots) for k in range(self.setup.n_samples)]
        params = dict(
            alpha1=trial.suggest_float("alpha1", 0.0, 1.0),
            alpha2=trial.suggest_float("alpha2", 0.0, 1.0),
            lambda1=trial.suggest_float("lambda1", *LAMBDA1, log=True),
            lambda2=trial.suggest_float("lambda2", *LAMBDA2, log=True),
        )
        if params["alpha1"] == 0 and params["alpha2"] == 0:
            return float("nan")
        t0 = time.perf_counter()
        value = self.evaluate(samples, **params)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return value

    def recipe(self, params: dict) -> PruneConfig:
        """A PruneConfig that `sculpt prune --config` replays to the same pruned model."""
        samples = sorted({int(v) for k, v in params.items() if k.startswith("sample_")})
        base = self.setup.config.to_dict()
        base["method"] = "sample_aware"
        base["options"] = {
            "samples": samples, "pool_size": self.setup.pool_size, "pool_seed": self.setup.config.seed,
            **{k: float(params[k]) for k in ("alpha1", "alpha2", "lambda1", "lambda2")},
        }
        if self.calib_text is not None:
            base["options"]["calib_text"] = self.calib_text
        return PruneConfig.from_dict(base)


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: optuna's 10, but at most a quarter of a small
    budget (with 8 trials and 10 startup ones, "TPE" would be random search), and at least 3."""
    return max(3, min(10, trials // 4))


def make_sampler(name: str, seed: int, trials: int = 100):
    optuna = require("optuna", extra="search", feature="sculpt search")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SculptError(f"unknown sampler {name!r}; choose tpe or random")


def run_study(objective: Objective, study_dir: Path, *, sampler: str = "tpe", trials: int = 20,
              timeout: float | None = None, seed: int = 0):
    """Create or resume ``<study_dir>/study.db`` and run until it holds ``trials`` finished trials."""
    optuna = require("optuna", extra="search", feature="sculpt search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=f"sculpt-{sampler}", storage=f"sqlite:///{study_dir / 'study.db'}", direction="minimize",
        sampler=make_sampler(sampler, seed, trials), load_if_exists=True,
    )
    done = len([t for t in study.trials if t.state.is_finished()])
    if trials > done:
        study.optimize(objective, n_trials=trials - done, timeout=timeout, catch=(Exception,), gc_after_trial=True)
    return study
