"""Second-order (OBS) compensation when input columns of a linear layer are removed.

With the layer-wise proxy Hessian H = X Xᵀ (X: the layer's inputs, columns = tokens), removing the
set P of input columns and updating the others by δW = −W[:, P] ([H⁻¹]_PP)⁻¹ H⁻¹[P, :] minimises
‖W X − W' X‖² (Optimal Brain Surgeon, block form; for one column p this is
δw = −(w_p / [H⁻¹]_pp) H⁻¹[:, p]). H⁻¹ columns are obtained by solving H x = e_p with damping.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from llmsculpt.models.spec import spec_for
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


@contextmanager
def input_hessians(model, enabled: bool, *, inputs: bool = False):
    """H = Σ x xᵀ of every o_proj and down_proj input during the forward passes inside; with
    ``inputs`` also of the attention and MLP inputs (q_proj's and gate_proj's), keyed "attn_in"/"mlp_in"."""
    spec = spec_for(model)
    store: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def make(key):
        def hook(_m, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            store[key] = store.get(key, 0) + (x.T @ x).cpu()

        return hook

    if enabled:
        for i, layer in enumerate(spec.decoder_layers(model)):
            q, _, _, o = spec.qkvo(layer)
            gate, _, down = spec.gate_up_down(layer)
            watched = [(o, "o"), (down, "down")] + ([(q, "attn_in"), (gate, "mlp_in")] if inputs else [])
            handles += [module.register_forward_pre_hook(make((i, name))) for module, name in watched]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def apply_obs(model, arch: Architecture, kind: str, units: list[tuple], hessians: dict) -> None:
    """Compensate the remaining o_proj/down_proj columns for the columns about to be removed."""
    spec = spec_for(model)
    hd = arch.head_dim
    for i, layer in enumerate(spec.decoder_layers(model)):
        gone = sorted(u[1] for u in units if u[0] == i)
        if not gone:
            continue
        _, _, _, o = spec.qkvo(layer)
        _, _, down = spec.gate_up_down(layer)
        lin, key = (o, (i, "o")) if kind == "attention" else (down, (i, "down"))
        cols = [h * hd + d for h in gone for d in range(hd)] if kind == "attention" else gone
        lin.weight.copy_(obs_remove_columns(lin.weight, hessians[key].to(lin.weight.device), cols))
