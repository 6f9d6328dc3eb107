"""Recipes of the commands that decide a plan from calibration data: prune and search."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmsculpt.config.base import Recipe, check_budget, check_ratio, check_round_to, parse_count
from llmsculpt.errors import SculptError


@dataclass
class DataConfig(Recipe):
    """Calibration data: a text/JSONL file, an HF dataset name, or None for the embedded default."""

    KIND = "data"

    calib: str | None = None
    n_samples: int = 10
    seq_len: int = 128
    min_length: int | None = None

    def __post_init__(self):
        if self.n_samples < 1:
            raise SculptError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.seq_len < 2:
            raise SculptError(f"seq_len must be >= 2, got {self.seq_len}")


@dataclass
class PruneConfig(Recipe):
    """Everything ``sculpt prune`` decides with. Method-specific knobs live in ``options`` (a mapping in
    YAML, checked against the method's options dataclass by :meth:`check_options`).

    Example:
        >>> PruneConfig(method="uniform", ratio=0.3, data={"n_samples": 4}).data.n_samples
        4
    """

    KIND = "prune"
    EXCLUSIVE = (("ratio", "target_params"),)

    model: str | None = None
    method: str = "adaptive"  # beats uniform on the default model (bench/adaptive_vs_uniform.py)
    ratio: float | None = None  # fraction of all parameters removed (default 0.2)
    target_params: int | str | None = None
    metric: str = "taylor"
    aggregation: str = "sum"
    layers: str | list | None = None  # which layers may be pruned; None = all
    attention: bool = True
    mlp: bool = True
    attn_unit: str = "kv"
    # attention/MLP split of a layer's sparsity: proportional | importance; None = the method's
    # default (uniform and its baselines: proportional, as LLM-Pruner; adaptive: importance)
    split: str | None = None
    seed: int = 0
    # kept MLP widths and query heads × head_dim are multiples of this (allocation/rounding.py); 1: any
    round_to: int = 1
    dtype: str = "float32"  # precision of the weights throughout: float32, bfloat16, float16, auto
    budget: str | int | None = None  # memory per device, e.g. "24GB": a run predicted not to fit is refused up front
    data: DataConfig = field(default_factory=DataConfig)
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DataConfig.from_dict(self.data, _prefix="data.", _kind=self.KIND)
        if not isinstance(self.options, dict):
            raise SculptError(f"options must be a mapping of method options, got {type(self.options).__name__}")
        self.target_params = parse_count(self.target_params)
        self.ratio = check_ratio(self.ratio, self.target_params, default=0.2)
        if self.attn_unit not in ("kv", "head"):
            raise SculptError(f"attn_unit must be 'kv' or 'head', got {self.attn_unit!r}")
        check_round_to(self.round_to)
        check_budget(self.budget)

    def removal_target(self, original_params: int) -> int:
        """Number of parameters to remove from a model of ``original_params``."""
        if self.target_params is not None:
            if self.target_params >= original_params:
                raise SculptError(
                    f"target {self.target_params:,} params is not smaller than the model ({original_params:,})"
                )
            return original_params - self.target_params
        return int(round(float(self.ratio) * original_params))

    def check_options(self):
        """The method exists and ``options`` are its options (unknown keys named): the method's
        options dataclass instance. Imports the methods, so it is not run on construction."""
        from llmsculpt.methods import check_options

        return check_options(self.method, self.options)


@dataclass
class SearchConfig(Recipe):
    """``sculpt search``: AdaPruner's Bayesian search over calibration samples and the importance mix.

    Example:
        >>> SearchConfig(ratio=0.2, trials=10).n_samples
        10
    """

    KIND = "search"
    EXCLUSIVE = (("ratio", "target_params"),)

    model: str | None = None
    ratio: float | None = None  # fraction of parameters removed (default 0.2)
    target_params: int | str | None = None
    trials: int = 20  # finished trials the study should hold (paper: 100)
    timeout: float | None = None  # seconds for this run
    sampler: str = "tpe"  # tpe | random | both
    n_samples: int = 10  # calibration samples per trial (paper: 10)
    pool_size: int = 32  # candidate samples to choose from
    seq_len: int = 128
    calib: str | None = None  # candidate texts (default: embedded text)
    eval_text: tuple[str, ...] = ()  # text files scored per trial (default: embedded held-out text)
    eval_windows: int = 16
    seed: int = 0
    round_to: int = 1
    dtype: str = "float32"

    def __post_init__(self):
        self.target_params = parse_count(self.target_params)
        self.ratio = check_ratio(self.ratio, self.target_params, default=0.2)
        if isinstance(self.eval_text, str):
            self.eval_text = (self.eval_text,)
        self.eval_text = tuple(self.eval_text)
        if self.sampler not in ("tpe", "random", "both"):
            raise SculptError(f"sampler must be tpe, random or both, got {self.sampler!r}")
        if self.trials < 1 or self.n_samples < 1 or self.pool_size < self.n_samples:
            raise SculptError("need --trials >= 1 and --pool-size >= --n-samples >= 1")
        check_round_to(self.round_to)

    def prune_config(self) -> PruneConfig:
        """The prune recipe every trial starts from (the search decides samples and importance)."""
        return PruneConfig(model=self.model, ratio=self.ratio, target_params=self.target_params, seed=self.seed,
                           round_to=self.round_to, dtype=self.dtype,
                           data={"calib": self.calib, "seq_len": self.seq_len, "n_samples": self.n_samples})
