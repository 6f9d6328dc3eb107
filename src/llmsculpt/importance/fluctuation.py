"""FLAP's fluctuation metric: how much an output-side input channel varies over the calibration
tokens, weighted by how much its weight column matters: S_j = Var(x_j) · ‖W[:, j]‖².

``InputMoments`` hooks the inputs of every o_proj and down_proj and keeps per-channel mean and
variance (needed for both the score and FLAP's bias compensation).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from llmsculpt.models.spec import spec_for


@dataclass
class Moments:
    total: torch.Tensor
    total_sq: torch.Tensor
    count: int = 0

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    @property
    def var(self) -> torch.Tensor:
        n = max(self.count, 2)
        return ((self.total_sq - self.total.pow(2) / n) / (n - 1)).clamp_min(0)


@dataclass
class InputMoments:
    attn: list[Moments] = field(default_factory=list)  # per layer, over o_proj input channels
    mlp: list[Moments] = field(default_factory=list)  # per layer, over down_proj input channels


@contextmanager
def output_input_moments(model: nn.Module) -> Iterator[InputMoments]:
    """Collect per-channel moments of o_proj / down_proj inputs during the forward passes inside."""
    spec = spec_for(model)
    out = InputMoments()
    handles = []

    def make(store: Moments):
        def hook(_mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            store.total += x.sum(0).cpu().double()
            store.total_sq += x.pow(2).sum(0).cpu().double()
            store.count += x.shape[0]

        return hook

    try:
        for layer in spec.decoder_layers(model):
            _, _, _, o = spec.qkvo(layer)
            _, _, down = spec.gate_up_down(layer)
            for lin, lst in ((o, out.attn), (down, out.mlp)):
                m = Moments(torch.zeros(lin.in_features, dtype=torch.float64), torch.zeros(lin.in_features, dtype=torch.float64))
                lst.append(m)
                handles.append(lin.register_forward_pre_hook(make(m)))
        yield out
    finally:
        for h in handles:
            h.remove()


def fluctuation(weight: torch.Tensor, moments: Moments) -> torch.Tensor:
    """S_j = Var(x_j) · ‖W[:, j]‖² for every input channel j of ``weight`` [out, in]."""
    return moments.var.float() * weight.detach().float().pow(2).sum(0).cpu()


def standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12) if x.numel() > 1 else torch.zeros_like(x)
