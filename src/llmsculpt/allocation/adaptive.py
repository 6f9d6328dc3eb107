"""Adapt-Pruner allocation: layer i gets sparsity S − A·I_i (I normalised), so layers that change
their input least are pruned most; the solver picks S so the total hits the step's target."""

from __future__ import annotations

import torch


def adaptive_offsets(norm_importance: torch.Tensor, layers: list[int], amplitude: float) -> dict[int, float]:
    """Offsets for ``solve_uniform_offset``: layer i's sparsity is S − offsets[i] = S − A·I_i."""
    return {i: float(amplitude * norm_importance[i]) for i in layers}
