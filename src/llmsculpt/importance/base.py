"""Importance metrics: one small class per metric, registered by name.

A metric turns one weight tensor and the statistics it declared (``needs``) into element scores of
the same shape. Group scores are then sums of element scores over a structure's slice of each
coupled tensor, aggregated across tensors (see :mod:`llmsculpt.importance.groups`). A metric that
is ``signed`` (vector-wise Taylor) is summed over the slice *before* taking the absolute value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmsculpt.registry import Registry

GRAD = "grad"  # sum over calibration batches of dL/dW
GRAD_SQ = "grad_sq"  # sum over samples of (dL_i/dW)^2 (diagonal empirical Fisher)
ACT = "act"  # per input column ||X_j||^2 of every Linear


@dataclass(frozen=True)
class TensorStats:
    """What a metric may use for one tensor. Missing statistics are None."""

    weight: torch.Tensor
    grad: torch.Tensor | None = None
    grad_sq: torch.Tensor | None = None
    act_sq: torch.Tensor | None = None  # [in_features], only for Linear weights


class Metric:
    name: str = ""
    needs: frozenset[str] = frozenset()
    signed: bool = False

    def element(self, s: TensorStats) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


METRICS: Registry[type[Metric]] = Registry("importance metric")


def get_metric(name: str, **kwargs) -> Metric:
    return METRICS.get(name)(**kwargs)


def require_stat(s: TensorStats, field: str, metric: str) -> torch.Tensor:
    value = getattr(s, field)
    if value is None:
        raise RuntimeError(f"metric {metric!r} needs {field!r}, which was not collected")
    return value
