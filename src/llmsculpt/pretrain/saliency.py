"""Saliency of EfficientLLM's three mini-group types, computed on output-side tensors only.

- attention head h of layer l: Σ over o_proj's input columns of h of s(W, g)
- MLP channel c of layer l: s over down_proj's input column c
- hidden (stem) channel d: Σ over all layers of o_proj/down_proj output row d, plus embedding column d
with s = |W·g| ("taylor", LLM-Pruner's first order) or ½·W²·g² ("fisher", OBD's diagonal). Each
score is divided by the parameters its removal frees, so the three types compete per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.structures.shapes import Architecture

METRICS = ("taylor", "fisher")
TYPES = ("attention", "mlp", "stem")


def element(weight: torch.Tensor, grad: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "taylor":
        return (weight * grad).abs()
    if metric == "fisher":
        return 0.5 * weight.pow(2) * grad.pow(2)
    raise SculptError(f"unknown saliency metric {metric!r}; choose one of: {', '.join(METRICS)}")


@dataclass
class Saliency:
    heads: list[torch.Tensor]  # per layer [n_heads], per parameter
    mlp: list[torch.Tensor]  # per layer [mlp], per parameter
    stem: torch.Tensor  # [hidden], per parameter


def unit_params(arch: Architecture) -> dict[str, float]:
    """Parameters freed by one mini-group of each type (K/V freed with a group's last head ignored)."""
    h, hd = arch.hidden, arch.head_dim
    per_layer_in = sum(2 * ls.n_heads * hd + 2 * ls.n_kv * hd + 3 * ls.mlp for ls in arch.layers)  # per hidden ch.
    stem = arch.vocab * (1 if arch.tied else 2) + per_layer_in + 2 * len(arch.layers) + 1
    return {"attention": 2 * h * hd, "mlp": 3 * h, "stem": stem}


@torch.no_grad()
def saliency(model, arch: Architecture, metric: str = "taylor") -> Saliency:
    """From the ``.grad`` currently on the parameters (call after a backward pass)."""
    spec = spec_for(model)
    sizes = unit_params(arch)
    hd = arch.head_dim
    heads, mlp = [], []
    stem = torch.zeros(arch.hidden)
    for layer, ls in zip(spec.decoder_layers(model), arch.layers):
        _, _, _, o = spec.qkvo(layer)
        _, _, down = spec.gate_up_down(layer)
        eo = element(o.weight, o.weight.grad, metric).float()
        ed = element(down.weight, down.weight.grad, metric).float()
        heads.append((eo.sum(0).view(ls.n_heads, hd).sum(1) / sizes["attention"]).cpu())
        mlp.append((ed.sum(0) / sizes["mlp"]).cpu())
        stem += (eo.sum(1) + ed.sum(1)).cpu()
    embed = get_path(model, spec.embed)
    if embed.weight.grad is not None:
        stem += element(embed.weight, embed.weight.grad, metric).float().sum(0).cpu()
    return Saliency(heads=heads, mlp=mlp, stem=stem / sizes["stem"])
