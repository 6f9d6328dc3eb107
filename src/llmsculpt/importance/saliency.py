"""Saliency of EfficientLLM's three mini-group types, computed on output-side tensors only.

- attention head h of layer l: Σ over o_proj's input columns of h of s(W, g)
- MLP channel c of layer l: s over down_proj's input column c
- hidden (stem) channel d: Σ over all layers of o_proj/down_proj output row d, plus embedding column d
with s = |W·g| ("taylor", LLM-Pruner's first order) or ½·W²·g² ("fisher", OBD's diagonal).

"obc" (Optimal Brain Compression) scores by the layer-output error left after removing the group
and optimally updating the rest of the layer, with the proxy Hessian H = X Xᵀ of the layer's inputs
from the same batch (damped as in importance/obs.py):
- head h: tr(W_P ([H⁻¹]_PP)⁻¹ W_Pᵀ) over o_proj's columns P of the head (block OBS);
- MLP channel c: Σ_r W[r, c]² / [H⁻¹]_cc over down_proj;
- stem channel d: the input column d of q/k/v and gate/up (Σ_r W[r, d]² / [H⁻¹]_dd with the
  attention / MLP input Hessians) plus the output row d of o_proj and down_proj (W[d] H W[d]ᵀ:
  an output row cannot be compensated), summed over layers.
Each score is divided by the parameters its removal frees, so the three types compete per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmsculpt.errors import SculptError
from llmsculpt.importance.obs import damped
from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.structures.shapes import Architecture

METRICS = ("taylor", "fisher", "obc")
HESSIAN_METRICS = ("obc",)  # need input Hessians (measure.Needs(hessians="all"))
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
def saliency(model, arch: Architecture, metric: str = "taylor", *, grads: dict | None = None,
             hessians: dict | None = None) -> Saliency:
    """From ``grads`` {parameter name: dL/dW} (``Measurements.grad`` with grad_params="saliency"),
    or for "obc" from ``hessians`` {(layer, "o" | "down" | "attn_in" | "mlp_in"): X Xᵀ}."""
    if metric == "obc":
        if not hessians:
            raise SculptError("the obc saliency needs input Hessians from a forward pass")
        return obc_saliency(model, arch, hessians)
    grads = grads or {}
    names = {id(p): n for n, p in model.named_parameters()}
    grad = lambda p: grads.get(names[id(p)])  # noqa: E731
    spec = spec_for(model)
    sizes = unit_params(arch)
    hd = arch.head_dim
    heads, mlp = [], []
    stem = torch.zeros(arch.hidden)
    for layer, ls in zip(spec.decoder_layers(model), arch.layers):
        _, _, _, o = spec.qkvo(layer)
        _, _, down = spec.gate_up_down(layer)
        if grad(o.weight) is None or grad(down.weight) is None:
            raise SculptError(f"the {metric} saliency needs the o_proj/down_proj gradients (measure grad=True)")
        eo = element(o.weight, grad(o.weight), metric).float()
        ed = element(down.weight, grad(down.weight), metric).float()
        heads.append((eo.sum(0).view(ls.n_heads, hd).sum(1) / sizes["attention"]).cpu())
        mlp.append((ed.sum(0) / sizes["mlp"]).cpu())
        stem += (eo.sum(1) + ed.sum(1)).cpu()
    embed = get_path(model, spec.embed)
    if grad(embed.weight) is not None:
        stem += element(embed.weight, grad(embed.weight), metric).float().sum(0).cpu()
    return Saliency(heads=heads, mlp=mlp, stem=stem / sizes["stem"])


def _inverse(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(damped(h.double()))


def _column_errors(weights: list[torch.Tensor], hinv: torch.Tensor) -> torch.Tensor:
    """Per input column p: Σ over the weights' rows of W[r, p]² / [H⁻¹]_pp."""
    sq = sum(w.double().pow(2).sum(0).cpu() for w in weights)
    return sq / hinv.diagonal()


@torch.no_grad()
def obc_saliency(model, arch: Architecture, hessians: dict) -> Saliency:
    spec = spec_for(model)
    sizes = unit_params(arch)
    hd = arch.head_dim
    heads, mlp = [], []
    stem = torch.zeros(arch.hidden, dtype=torch.float64)
    for i, (layer, ls) in enumerate(zip(spec.decoder_layers(model), arch.layers)):
        q, k, v, o = spec.qkvo(layer)
        gate, up, down = spec.gate_up_down(layer)
        h_o, h_down = hessians[(i, "o")].double(), hessians[(i, "down")].double()
        wo = o.weight.double().cpu()
        hinv = _inverse(h_o)
        blocks = hinv.view(ls.n_heads, hd, ls.n_heads, hd).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [n, hd, hd]
        w_heads = wo.view(wo.shape[0], ls.n_heads, hd).permute(1, 0, 2)  # [n, out, hd]
        solved = torch.linalg.solve(blocks, w_heads.transpose(1, 2))  # ([H⁻¹]_PP)⁻¹ W_Pᵀ: [n, hd, out]
        head_err = (w_heads.transpose(1, 2) * solved).sum((1, 2))
        heads.append((head_err / sizes["attention"]).float())
        mlp.append((_column_errors([down.weight], _inverse(h_down)) / sizes["mlp"]).float())
        stem += _column_errors([q.weight, k.weight, v.weight], _inverse(hessians[(i, "attn_in")]))
        stem += _column_errors([gate.weight, up.weight], _inverse(hessians[(i, "mlp_in")]))
        wd = down.weight.double().cpu()
        stem += ((wo @ h_o) * wo).sum(1) + ((wd @ h_down) * wd).sum(1)  # output rows: W[d] H W[d]ᵀ
    return Saliency(heads=heads, mlp=mlp, stem=(stem / sizes["stem"]).float())
