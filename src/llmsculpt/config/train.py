"""Recipes of the commands that train: accel (Adapt-Accel), pretrain-prune (EfficientLLM), finetune.

The run engine (``llmsculpt.run``) reads the schedule fields; the command fields (``model``,
``data``, ``format``, ``seq_len``, ``dtype``) say what the verb loads, so a saved recipe replays the
whole run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmsculpt.config.base import Recipe, check_budget, check_ratio, check_round_to, check_serve, parse_count
from llmsculpt.errors import SculptError

# mini-group types of pruning-aware training (EfficientLLM)
MINI_GROUP_TYPES = ("attention", "mlp", "stem")
DATA_FORMATS = ("text", "alpaca", "chat")


def _check_data_format(fmt: str) -> None:
    if fmt not in DATA_FORMATS:
        raise SculptError(f"format must be one of {', '.join(DATA_FORMATS)}, got {fmt!r}")


@dataclass
class AccelConfig(Recipe):
    """Adapt-Accel: phases of pruning then recovery training (``sculpt accel``).

    Example:
        >>> AccelConfig(target_params="90M", phases=20).target_params
        90000000
    """

    KIND = "accel"
    EXCLUSIVE = (("ratio", "target_params"),)

    target_params: int | str | None = None
    ratio: float | None = None  # instead of target_params: fraction of parameters removed
    model: str | None = None
    data: str | None = None  # training data file
    format: str = "text"  # text | alpaca | chat
    skip_bad: bool = False  # skip malformed records (counted) instead of failing
    seq_len: int = 256
    phases: int = 4
    data_allocation: str = "linear"
    batch_size: int = 4
    lr: float = 2e-5
    min_lr: float = 2e-6
    schedule: str = "wsd"
    mode: str = "full"  # full | lora
    distill: bool = False
    temperature: float = 2.0
    distill_weight: float = 0.5
    prune_method: str = "adaptive"
    prune_steps: int = 2
    calib_samples: int = 8
    calib_len: int = 128
    checkpoint_every: int = 50
    optimizer_state: str = "reset"  # reset | carry: AdamW moments across a pruning (train/optim_carry.py)
    seed: int = 0
    round_to: int | None = None  # every phase's plan keeps MLP widths and query heads × head_dim multiples of this
    serve: str = "any"  # every phase's plan only has shapes this runtime serves (allocation/serving.py)
    dtype: str = "auto"
    budget: str | int | None = None  # memory per device, e.g. "24GB": a run predicted not to fit is refused up front

    def __post_init__(self):
        self.target_params = parse_count(self.target_params)
        self.ratio = check_ratio(self.ratio, self.target_params)
        if self.mode not in ("full", "lora"):
            raise SculptError(f"mode must be full or lora, got {self.mode!r}")
        if self.optimizer_state not in ("reset", "carry"):
            raise SculptError(f"optimizer_state must be reset or carry, got {self.optimizer_state!r}")
        if self.data_allocation not in ("linear", "constant", "cosine"):
            raise SculptError(f"data_allocation must be linear, constant or cosine, got {self.data_allocation!r}")
        if self.schedule not in ("wsd", "cosine"):
            raise SculptError(f"schedule must be wsd or cosine, got {self.schedule!r}")
        _check_data_format(self.format)
        if self.batch_size < 1 or self.phases < 1:
            raise SculptError("batch size and phases must be >= 1")
        if self.round_to is not None:
            check_round_to(self.round_to)
        check_serve(self.serve)
        check_budget(self.budget)

    def resolved(self, original_params: int) -> "AccelConfig":
        """The recipe with ``ratio`` turned into the ``target_params`` of a model of ``original_params``."""
        if self.target_params is not None:
            return self
        return dataclasses.replace(self, ratio=None, target_params=round(original_params * (1 - self.ratio)))


@dataclass
class PretrainPruneConfig(Recipe):
    """EfficientLLM pruning-aware training to a parameter budget (``sculpt pretrain-prune``).

    ``cycle`` is "pruning steps:training steps" (paper: 4:1, 2:1, 1:1, 1:9); ``prune_every`` and
    ``train_every`` are read from it.

    Example:
        >>> PretrainPruneConfig(target_params="60M", cycle="2:1").prune_every
        2
    """

    KIND = "pretrain-prune"

    target_params: int | str | None = None
    cycle: str = "1:1"  # pruning steps : training steps
    quantum: float = 0.02  # fraction of the original parameters removed per pruning step
    metric: str = "taylor"
    types: tuple[str, ...] = MINI_GROUP_TYPES
    fixed_order: tuple[str, ...] | None = None  # e.g. ("stem", "attention", "mlp"), cycled
    obs: bool = False
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-5
    continue_steps: int = 0
    seed: int = 0
    round_to: int | None = None  # pruned widths (hidden, MLP, query heads × head_dim) multiples of this; 1: any
    serve: str = "any"  # every step only makes shapes this runtime serves (allocation/serving.py)
    model: str | None = None
    data: str | None = None  # plain-text corpus
    seq_len: int = 256
    checkpoint_every: int = 50  # steps between checkpoints in <out>.ckpt/
    dtype: str = "auto"
    budget: str | int | None = None  # memory per device, e.g. "24GB": a run predicted not to fit is refused up front

    def __post_init__(self):
        self.target_params = parse_count(self.target_params)
        if self.target_params is None or self.target_params <= 0:
            raise SculptError("pretrain-prune needs a positive target_params (the parameter budget, e.g. 60M)")
        if isinstance(self.types, str):
            self.types = tuple(t.strip() for t in self.types.split(",") if t.strip())
        if isinstance(self.fixed_order, str):
            self.fixed_order = tuple(t.strip() for t in self.fixed_order.split(",") if t.strip())
        self.types = tuple(self.types)
        self.fixed_order = tuple(self.fixed_order) if self.fixed_order else None
        try:
            self.prune_every, self.train_every = (int(x) for x in str(self.cycle).split(":"))
        except ValueError:
            raise SculptError(f"cycle must look like 4:1 (pruning:training steps), got {self.cycle!r}") from None
        if self.prune_every < 1 or self.train_every < 0 or not 0 < self.quantum < 1:
            raise SculptError("need at least one pruning step per cycle and 0 < quantum < 1")
        bad = set(self.types) - set(MINI_GROUP_TYPES) | set(self.fixed_order or ()) - set(MINI_GROUP_TYPES)
        if bad:
            raise SculptError(f"unknown mini-group types {sorted(bad)}; choose from {', '.join(MINI_GROUP_TYPES)}")
        if self.round_to is not None:
            check_round_to(self.round_to)
        check_serve(self.serve)
        check_budget(self.budget)


@dataclass
class FinetuneConfig(Recipe):
    """Recovery fine-tuning of a (pruned) model, LoRA (merged before saving) or full (``sculpt finetune``).

    Example:
        >>> FinetuneConfig(model="out/m", data="alpaca.jsonl").lora_r
        8
    """

    KIND = "finetune"

    model: str | None = None
    data: str | None = None  # training data file
    format: str = "alpaca"  # text | alpaca | chat
    skip_bad: bool = False
    mode: str = "lora"  # lora | full
    lora_r: int = 8
    lora_alpha: int = 16
    epochs: int = 2
    lr: float = 1e-4
    min_lr: float | None = None  # None: lr / 10
    batch_size: int = 4
    grad_accum: int = 1  # micro-batches of batch_size per optimisation step
    gradient_checkpointing: bool = False  # recompute decoder activations in backward (less memory)
    seq_len: int = 256
    seed: int = 0
    dtype: str = "auto"

    def __post_init__(self):
        if self.grad_accum < 1:
            raise SculptError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.mode not in ("lora", "full"):
            raise SculptError(f"mode must be lora or full, got {self.mode!r}")
        _check_data_format(self.format)
        if self.epochs < 1:
            raise SculptError("--epochs must be >= 1")
        if self.batch_size < 1 or self.lora_r < 1:
            raise SculptError("batch size and LoRA rank must be >= 1")
