"""Second-order terms with the diagonal empirical Fisher as Hessian proxy (OBD-style).

``fisher``: ½·W²·Σᵢgᵢ²; ``taylor_mix``: |W·g| + ½·W²·Σᵢgᵢ² (first- plus second-order, LLM-Pruner's
"mix"). ``second_scale`` puts the second-order term on the first-order term's scale (AdaPruner's
alignment factor); 1 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmsculpt.importance.base import GRAD, GRAD_SQ, METRICS, Metric, TensorStats, require_stat


def fisher_term(weight: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
    return 0.5 * weight.pow(2) * grad_sq


@METRICS.register("fisher")
@dataclass
class Fisher(Metric):
    second_scale: float = 1.0
    name = "fisher"
    needs = frozenset({GRAD_SQ})

    def element(self, s: TensorStats) -> torch.Tensor:
        return self.second_scale * fisher_term(s.weight, require_stat(s, "grad_sq", self.name))


@METRICS.register("taylor_mix")
@dataclass
class TaylorMix(Metric):
    second_scale: float = 1.0
    name = "taylor_mix"
    needs = frozenset({GRAD, GRAD_SQ})

    def element(self, s: TensorStats) -> torch.Tensor:
        first = (s.weight * require_stat(s, "grad", self.name)).abs()
        return first + self.second_scale * fisher_term(s.weight, require_stat(s, "grad_sq", self.name))
