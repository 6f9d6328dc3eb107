"""Layer importance: how much a decoder layer changes its input (Adapt-Pruner).

I_i = −mean over tokens of cos(in_i, out_i) by default (a layer whose output is nearly its input
matters little); ``euclidean`` and ``manhattan`` use the mean distance ‖out − in‖ instead.
Hooks are installed in a context manager, so the measurement can ride along any forward pass
(for example the gradient pass of the Taylor statistics) at no extra cost.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import spec_for

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


class LayerImportance:
    """Accumulates the mean change of every decoder layer over the tokens it sees."""

    def __init__(self, n_layers: int, distance: str):
        if distance not in DISTANCES:
            raise SculptError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
        self.distance = distance
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


@contextmanager
def layer_io_hooks(model: nn.Module, *, distance: str = "cosine") -> Iterator[LayerImportance]:
    """Measure layer importance during whatever forward passes run inside the block."""
    layers = spec_for(model).decoder_layers(model)
    acc = LayerImportance(len(layers), distance)
    handles = []

    def make(i: int):
        def hook(_mod, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, (tuple, list)) else output
            acc.add(i, x_in, x_out)

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(make(i), with_kwargs=True))
        yield acc
    finally:
        for h in handles:
            h.remove()


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
