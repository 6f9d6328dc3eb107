"""Carry AdamW's moments across a pruning step instead of starting them afresh.

Pruning changes parameter shapes, so the optimiser cannot simply continue. Two choices:
``reset`` (a new AdamW: the bias-corrected first steps then move every weight by about the learning
rate, whatever its history) or ``carry``: the moments of the rows and columns that survive are
kept, those of removed ones dropped, and each parameter keeps its step count.

Carrying uses the surgery itself: two shadow copies of the model hold the first and second moments
in place of the weights, and the pruning plan is applied to them too, so the moments follow exactly
the indices the weights followed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmsculpt.plan import Plan
from llmsculpt.surgery import apply_plan


class MomentShadows:
    """Adam's moments of ``model`` laid out as two models (exp_avg, exp_avg_sq), before pruning."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.steps: dict[str, torch.Tensor] = {}
        self.shadows = []
        by_id = {id(p): name for name, p in model.named_parameters()}
        states = {by_id[id(p)]: s for p, s in optimizer.state.items() if id(p) in by_id and "exp_avg" in s}
        for key in ("exp_avg", "exp_avg_sq"):
            shadow = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in shadow.named_parameters():
                    p.copy_(states[name][key] if name in states else torch.zeros_like(p))
            self.shadows.append(shadow)
        self.steps = {name: s["step"] for name, s in states.items()}

    def carry(self, plan: Plan, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Prune the shadows by ``plan`` and load their moments into ``optimizer`` (built on the
        pruned ``model``); returns the number of parameters whose moments were carried."""
        for shadow in self.shadows:
            apply_plan(shadow, plan, rms_rescale=False)
        first, second = (dict(s.named_parameters()) for s in self.shadows)
        carried = 0
        for name, p in model.named_parameters():
            if name not in self.steps or name not in first or first[name].shape != p.shape:
                continue
            optimizer.state[p] = {
                "step": self.steps[name].clone(),
                "exp_avg": first[name].detach().clone().to(p.device),
                "exp_avg_sq": second[name].detach().clone().to(p.device),
            }
            carried += 1
        return carried
