"""Carry AdamW's moments across a pruning step instead of starting them afresh.

Pruning changes parameter shapes, so the optimiser cannot simply continue. Two choices:
``reset`` (a new AdamW: the bias-corrected first steps then move every weight by about the learning
rate, whatever its history) or ``carry``: the moments of the rows and columns that survive are
kept, those of removed ones dropped, and each parameter keeps its step count.

Carrying uses the surgery itself: shadow copies of the model hold the first and second moments
(and, for bf16/fp16 weights, the fp32 master weights of train/mixed.py) in place of the weights, and
the pruning plan is applied to them too, so the state follows exactly the indices the weights
followed. The state is read and written through ``state_dict()``, indexed like the trainable
parameters, so it works the same for torch's AdamW and for MixedAdamW.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmsculpt.plan import Plan
from llmsculpt.surgery import apply_plan


class MomentShadows:
    """The optimiser state of ``model`` laid out as models, before pruning: one fp32 shadow per
    per-element state tensor (AdamW's exp_avg and exp_avg_sq, and MixedAdamW's fp32 ``master``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        sd = optimizer.state_dict()
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        shapes = dict((name, p.shape) for name, p in model.named_parameters())
        states = {trainable[i]: s for i, s in sd["state"].items() if i < len(trainable) and "exp_avg" in s}
        keys = sorted({k for s in states.values() for k, v in s.items()
                       if isinstance(v, torch.Tensor) and v.dim() and k != "step"})
        self.shadows: dict[str, nn.Module] = {}
        for key in keys:
            memo = {id(p): nn.Parameter(torch.zeros(p.shape, dtype=torch.float32, device=p.device), requires_grad=False)
                    for p in model.parameters()}  # fp32 whatever the weights' dtype; no copy of the weights
            shadow = copy.deepcopy(model, memo)
            with torch.no_grad():
                for name, p in shadow.named_parameters():
                    if name in states and key in states[name] and states[name][key].shape == shapes[name]:
                        p.copy_(states[name][key])
            self.shadows[key] = shadow
        self.steps = {name: s["step"] for name, s in states.items()}

    def carry(self, plan: Plan, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Prune the shadows by ``plan`` and load their state into ``optimizer`` (built on the pruned
        ``model``); returns the number of parameters whose state was carried. A carried master is
        kept only where it still rounds to the pruned weight (a weight the plan updated, e.g. FLAP's
        bias or an OBS step, starts its master from the new value)."""
        for shadow in self.shadows.values():
            apply_plan(shadow, plan, rms_rescale=False)
        pruned = {key: dict(s.named_parameters()) for key, s in self.shadows.items()}
        sd = optimizer.state_dict()
        state, carried = {}, 0
        for index, (name, p) in enumerate((n, p) for n, p in model.named_parameters() if p.requires_grad):
            if name not in self.steps or any(name not in t or t[name].shape != p.shape for t in pruned.values()):
                continue
            entry = {"step": self.steps[name].clone()}
            for key, tensors in pruned.items():
                value = tensors[name].detach().clone()
                if key == "master" and not torch.equal(value.to(p.dtype), p.detach()):
                    value = p.detach().float()
                entry[key] = value
            state[index] = entry
            carried += 1
        optimizer.load_state_dict({**sd, "state": state})
        return carried
