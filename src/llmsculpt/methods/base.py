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


class LocalPasses:
    """Where an iterative method's measuring passes run and who decides: here, on the model itself.

    Adapt-Pruner asks its passes object to ``measure`` (layer importance + the statistics its metric
    needs), decides a step only where ``decides``, makes every participant ``agree`` on the step's
    plan, and reports each surgery with ``applied``. In one process all of that is trivial (this
    class); train/sharded.py's ``ShardedPasses`` runs the passes on a sharded model over several
    processes, with the main process deciding.
    """

    decides = True

    def measure(self, model: nn.Module, batch: torch.Tensor, needs, *, distance: str):
        from llmsculpt.importance.collect import collect_stats
        from llmsculpt.importance.layer_importance import layer_io_hooks

        with layer_io_hooks(model, distance=distance) as imp:
            stats = collect_stats(model, batch, needs)
        return stats, imp.values()

    def agree(self, plan: Plan) -> Plan:
        return plan

    def applied(self, model: nn.Module) -> None:
        pass


@dataclass
class PruneContext:
    model: nn.Module
    tokenizer: object
    config: PruneConfig
    calibration: Callable[[int], torch.Tensor]  # seed -> LongTensor [n_samples, seq_len]
    progress: bool = True
    passes: LocalPasses = field(default_factory=LocalPasses)  # only Adapt-Pruner uses other passes


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
