"""Recipes of the commands that decide a plan from calibration data: prune and search."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmsculpt.config.base import Recipe, check_budget, check_ratio, check_round_to, check_serve, parse_count
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


def check_hidden_rate(value) -> float:
    """The hidden-channel rate as a float in [0, 10] (true: 1, false/None: 0); else a one-line error."""
    if value is None or isinstance(value, bool):
        return float(bool(value))
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not 0 <= rate <= 10:
        raise SculptError(f"hidden must be true/false or a rate in [0, 10] (1: the layers' sparsity), got {value!r}")
    return rate


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
    # kept MLP widths and query heads × head_dim are multiples of this (allocation/rounding.py); 1: any;
    # None: the serve runtime's default (llamacpp 32, else 1)
    round_to: int | None = None
    serve: str = "any"  # runtime the plan must run in exactly: any | uniform | vllm | llamacpp (allocation/serving.py)
    # hidden (stem) channels: the hidden width loses hidden × S of its channels, S the layers' common
    # sparsity (0/false: untouched; 1/true: the same fraction as heads and MLP channels); embedding,
    # norms, every layer's in/out projections and lm_head shrink together. uniform, magnitude, wanda-sp
    # and adaptive only (allocation/sparsity.py)
    hidden: float | bool = 0.0
    dtype: str = "auto"  # precision of the weights throughout: auto (the checkpoint's own), bfloat16, float16, float32
    budget: str | int | None = None  # memory per device, e.g. "24GB": a run predicted not to fit is refused up front
    # one decoder layer resident at a time (forward-only methods: magnitude, wanda-sp, flap, shortgpt):
    # true, false, or "auto" (layer by layer when the whole model is predicted not to fit)
    layer_by_layer: bool | str = False
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
        if self.round_to is not None:
            check_round_to(self.round_to)
        check_serve(self.serve)
        self.hidden = check_hidden_rate(self.hidden)
        check_budget(self.budget)
        if self.layer_by_layer not in (True, False, "auto"):
            raise SculptError(f"layer_by_layer must be true, false or 'auto', got {self.layer_by_layer!r}")

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
        from llmsculpt.methods import check_options, get_method
        from llmsculpt.methods.oneshot import HIDDEN_METHODS

        if self.hidden and get_method(self.method).name not in HIDDEN_METHODS:
            raise SculptError(f"method {self.method} cannot prune hidden channels (hidden={self.hidden:g}); "
                              f"use one of {', '.join(HIDDEN_METHODS)}, or hidden=0")
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
    round_to: int | None = None  # None: the serve runtime's default
    serve: str = "any"  # any | uniform | vllm | llamacpp: every trial plans under that runtime's rules
    dtype: str = "auto"

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
        if self.round_to is not None:
            check_round_to(self.round_to)
        check_serve(self.serve)

    def prune_config(self) -> PruneConfig:
        """The prune recipe every trial starts from (the search decides samples and importance)."""
        return PruneConfig(model=self.model, ratio=self.ratio, target_params=self.target_params, seed=self.seed,
                           round_to=self.round_to, serve=self.serve, dtype=self.dtype,
                           data={"calib": self.calib, "seq_len": self.seq_len, "n_samples": self.n_samples})
