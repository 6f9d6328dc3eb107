"""Second-order (OBS) compensation when input columns of a linear layer are removed.

With the layer-wise proxy Hessian H = X Xᵀ (X: the layer's inputs, columns = tokens), removing the
set P of input columns and updating the others by δW = −W[:, P] ([H⁻¹]_PP)⁻¹ H⁻¹[P, :] minimises
‖W X − W' X‖² (Optimal Brain Surgeon, block form; for one column p this is
δw = −(w_p / [H⁻¹]_pp) H⁻¹[:, p]). H⁻¹ columns are obtained by solving H x = e_p with damping.
The Hessians come from :func:`llmsculpt.measure.hooks.input_hessians`; EfficientLLM's step puts
the update in its plan (``obs_updates``), which surgery applies.
"""

from __future__ import annotations

import torch

from llmsculpt.models.spec import spec_for
from llmsculpt.plan import Update
from llmsculpt.structures.shapes import Architecture


def damped(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """H + damp·mean(diag H)·I (keeps the solve well-posed for dead or collinear inputs)."""
    d = damp * h.diagonal().mean().clamp_min(1e-8)
    return h + d * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)


def obs_remove_columns(weight: torch.Tensor, hessian: torch.Tensor, cols: list[int], *, damp: float = 0.01) -> torch.Tensor:
    """A copy of ``weight`` [out, in] with ``cols`` zeroed and the other columns compensated."""
    if not cols:
        return weight.clone()
    w = weight.double()
    h = damped(hessian.double(), damp)
    p = torch.tensor(sorted(cols), device=w.device)
    e = torch.zeros(h.shape[0], len(p), dtype=h.dtype, device=h.device)
    e[p, torch.arange(len(p))] = 1.0
    hinv_cols = torch.linalg.solve(h, e)  # H⁻¹[:, P]
    block = hinv_cols[p, :]  # [H⁻¹]_PP
    delta = -w[:, p] @ torch.linalg.solve(block, hinv_cols.T)  # −W_P ([H⁻¹]_PP)⁻¹ H⁻¹[P, :]
    out = w + delta
    out[:, p] = 0.0
    return out.to(weight.dtype)


@torch.no_grad()
def obs_updates(model, arch: Architecture, kind: str, units: list[tuple], hessians: dict) -> list[Update]:
    """The plan updates that compensate the remaining o_proj ("attention") / down_proj ("mlp")
    columns of every layer for the ``units`` (layer, head | channel) a step removes: each touched
    layer's weight is *set* to its OBS-updated columns that stay."""
    spec = spec_for(model)
    hd = arch.head_dim
    out = []
    for i, layer in enumerate(spec.decoder_layers(model)):
        gone = sorted(u[1] for u in units if u[0] == i)
        if not gone:
            continue
        if kind == "attention":
            lin, key, unit, cols = spec.qkvo(layer)[3], (i, "o"), hd, [h * hd + d for h in gone for d in range(hd)]
        else:
            lin, key, unit, cols = spec.gate_up_down(layer)[2], (i, "down"), 1, gone
        new = obs_remove_columns(lin.weight, hessians[key].to(lin.weight.device), cols)
        kept = torch.tensor([c for c in range(new.shape[1]) if c not in set(cols)], device=new.device)
        out.append(Update(layer=i, module="o_proj" if kind == "attention" else "down_proj", param="weight",
                          op="set", value=new.index_select(1, kept), unit=unit))
    return out
