"""Activation-aware magnitude (Wanda, and Wanda-sp on structures): |W_ij|·‖X_j‖.

Tensors that are not Linear weights (norms, embeddings) fall back to |W|.
"""

from __future__ import annotations

import torch

from llmsculpt.importance.base import ACT, METRICS, Metric, TensorStats


@METRICS.register("wanda")
class Wanda(Metric):
    name = "wanda"
    needs = frozenset({ACT})

    def element(self, s: TensorStats) -> torch.Tensor:
        if s.act_sq is None or s.weight.dim() != 2:
            return s.weight.abs()
        return s.weight.abs() * s.act_sq.sqrt().to(s.weight.dtype)[None, :]
