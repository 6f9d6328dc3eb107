"""First-order Taylor: the loss change of zeroing weights, ΔL ≈ -W·∂L/∂W (LLM-Pruner).

``taylor`` (element-wise) sums |W·g| over a group; ``taylor_vector`` takes |Σ W·g| over the group,
i.e. the first-order change of removing the whole group at once.
"""

from __future__ import annotations

import torch

from llmsculpt.importance.base import GRAD, METRICS, Metric, TensorStats, require_stat


@METRICS.register("taylor")
class TaylorElement(Metric):
    name = "taylor"
    needs = frozenset({GRAD})

    def element(self, s: TensorStats) -> torch.Tensor:
        return (s.weight * require_stat(s, "grad", self.name)).abs()


@METRICS.register("taylor_vector")
class TaylorVector(Metric):
    name = "taylor_vector"
    needs = frozenset({GRAD})
    signed = True

    def element(self, s: TensorStats) -> torch.Tensor:
        return s.weight * require_stat(s, "grad", self.name)
