"""What every pruning method receives and returns, and the method registry.

A method prunes ``ctx.model`` in place (surgery), and returns the plan relative to the model it
was given (iterative methods compose their step plans) plus a history for the report.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from llmsculpt.config import PruneConfig
from llmsculpt.plan import Plan
from llmsculpt.registry import Registry


@dataclass
class PruneContext:
    model: nn.Module
    tokenizer: object
    config: PruneConfig
    calibration: Callable[[int], torch.Tensor]  # seed -> LongTensor [n_samples, seq_len]
    progress: bool = True


@dataclass
class PruneResult:
    plan: Plan
    history: dict = field(default_factory=dict)


METHODS: Registry[Callable[[PruneContext], PruneResult]] = Registry("pruning method")

# modules that register methods; imported on first lookup so `import llmsculpt` stays lean
_METHOD_MODULES = (
    "llmsculpt.methods.uniform",
    "llmsculpt.methods.adaptive",
    "llmsculpt.methods.flap",
    "llmsculpt.methods.layer_removal",
    "llmsculpt.methods.sample_aware",
)


def get_method(name: str) -> Callable[[PruneContext], PruneResult]:
    for module in _METHOD_MODULES:
        importlib.import_module(module)
    return METHODS.get(name)
