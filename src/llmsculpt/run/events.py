"""What a schedule asks the run engine to do next: the events of a pruning-and-training run.

A schedule (run/accel.py, run/pruning_aware.py) is a generator of these events; the engine
(run/engine.py) performs each one and sends back its outcome (a training step's loss, a pruning
step's log fields). Events are plain data, so a schedule's sequence can be read and tested without
a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmsculpt.config import PretrainPruneConfig, PruneConfig
from llmsculpt.train.data import Example


@dataclass
class PruneTo:
    """Prune the model to ``config.target_params`` with the planner ``config.method``, measuring on
    ``calibration`` (nothing happens if the model is already there). ``carry``: keep AdamW's moments
    of the surviving rows and columns (train/optim_carry.py) instead of a fresh optimiser."""

    config: PruneConfig
    calibration: torch.Tensor
    carry: bool = False


@dataclass
class PruningStep:
    """One pruning-aware step (EfficientLLM): measure ``examples`` (a global batch), remove the
    mini-groups the main process picks. Outcome: the step's log fields (loss, type, removed, saliency)."""

    examples: list[Example]
    config: PretrainPruneConfig
    quantum: float
    prune_done: int


@dataclass
class Train:
    """One optimisation step on the global batch ``examples`` at learning rate ``lr``. Outcome: the
    loss averaged over processes. With a ``teacher`` the loss is distilled from it."""

    examples: list[Example]
    lr: float
    teacher: torch.nn.Module | None = None
    temperature: float = 2.0
    distill_weight: float = 0.5


@dataclass
class Step:
    """A step is done: log ``entry`` (its "step" is the engine's counter), count it, show ``postfix``
    on the progress bar; then ``stop_after`` and the periodic checkpoint apply."""

    entry: dict
    postfix: dict = field(default_factory=dict)


@dataclass
class AttachLora:
    """Add LoRA adapters, initialised from ``seed`` (a resumed phase starts from the same ones)."""

    seed: int
    restore: bool = False  # resuming: also load the phase's checkpointed adapters, if they continue it


@dataclass
class MergeLora:
    """Fold the LoRA adapters into the base weights (before a pruning, at the end of a phase)."""


@dataclass
class Checkpoint:
    """Write a checkpoint of the model (with the optimiser state unless ``optimizer=False``); with
    no checkpoint directory, only bring the main process's model up to date."""

    optimizer: bool = True


Event = PruneTo | PruningStep | Train | Step | AttachLora | MergeLora | Checkpoint
