"""Magnitude: |W| (L1) or W^2 (L2). Needs nothing but the weights."""

from __future__ import annotations

import torch

from llmsculpt.importance.base import METRICS, Metric, TensorStats


@METRICS.register("l1")
class L1(Metric):
    name = "l1"

    def element(self, s: TensorStats) -> torch.Tensor:
        return s.weight.abs()


@METRICS.register("l2")
class L2(Metric):
    name = "l2"

    def element(self, s: TensorStats) -> torch.Tensor:
        return s.weight.pow(2)
