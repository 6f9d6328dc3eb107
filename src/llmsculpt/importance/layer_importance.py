"""Layer importance: how much a decoder layer changes its input (Adapt-Pruner).

I_i = −mean over tokens of cos(in_i, out_i) by default (a layer whose output is nearly its input
matters little); ``euclidean`` and ``manhattan`` use the mean distance ‖out − in‖ instead.
The hooks live in :mod:`llmsculpt.measure.hooks` (``layer_io_hooks``), so the measurement rides
along any forward pass (for example the gradient pass of the Taylor statistics) at no extra cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from llmsculpt.errors import SculptError

DISTANCES = ("cosine", "euclidean", "manhattan")


def layer_change(x_in: torch.Tensor, x_out: torch.Tensor, distance: str) -> torch.Tensor:
    """Per-token importance contribution [tokens] of one layer (higher = changes its input more)."""
    a, b = x_in.float().reshape(-1, x_in.shape[-1]), x_out.float().reshape(-1, x_out.shape[-1])
    if distance == "cosine":
        return -F.cosine_similarity(a, b, dim=-1)
    if distance == "euclidean":
        return (b - a).norm(dim=-1)
    if distance == "manhattan":
        return (b - a).abs().sum(dim=-1)
    raise SculptError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise SculptError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
    return distance


class LayerImportance:
    """Accumulates the mean change of every decoder layer over the tokens it sees
    (fed by :func:`llmsculpt.measure.hooks.layer_io_hooks`)."""

    def __init__(self, n_layers: int, distance: str):
        self.distance = check_distance(distance)
        self.sums = torch.zeros(n_layers, dtype=torch.float64)
        self.counts = torch.zeros(n_layers, dtype=torch.float64)

    def add(self, i: int, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        v = layer_change(x_in.detach(), x_out.detach(), self.distance)
        self.sums[i] += v.sum().item()
        self.counts[i] += v.numel()

    def values(self) -> torch.Tensor:
        if (self.counts == 0).any():
            raise RuntimeError("layer importance: some layers saw no tokens (no forward pass ran)")
        return (self.sums / self.counts).float()


def normalise(importance: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Centre the selected layers' importance and scale to max |I| = 1; others get 0.

    All-equal importances give zeros (no layer is favoured)."""
    out = torch.zeros_like(importance, dtype=torch.float32)
    if not layers:
        return out
    sel = importance[layers].float()
    centred = sel - sel.mean()
    scale = centred.abs().max()
    if scale <= 1e-12:
        return out
    out[layers] = centred / scale
    return out
