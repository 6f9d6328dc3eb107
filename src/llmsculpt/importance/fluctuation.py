"""FLAP's fluctuation metric: how much an output-side input channel varies over the calibration
tokens, weighted by how much its weight column matters: S_j = Var(x_j) · ‖W[:, j]‖².

``InputMoments`` holds the per-channel mean and variance of every o_proj and down_proj input
(collected by :func:`llmsculpt.measure.hooks.output_input_moments`; needed for both the score and
FLAP's bias compensation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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


def fluctuation(weight: torch.Tensor, moments: Moments) -> torch.Tensor:
    """S_j = Var(x_j) · ‖W[:, j]‖² for every input channel j of ``weight`` [out, in]."""
    return moments.var.float() * weight.detach().float().pow(2).sum(0).cpu()


def standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12) if x.numel() > 1 else torch.zeros_like(x)
