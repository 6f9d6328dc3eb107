"""Second-order (OBS) compensation when input columns of a linear layer are removed.

With the layer-wise proxy Hessian H = X Xᵀ (X: the layer's inputs, columns = tokens), removing the
set P of input columns and updating the others by δW = −W[:, P] ([H⁻¹]_PP)⁻¹ H⁻¹[P, :] minimises
‖W X − W' X‖² (Optimal Brain Surgeon, block form; for one column p this is
δw = −(w_p / [H⁻¹]_pp) H⁻¹[:, p]). H⁻¹ columns are obtained by solving H x = e_p with damping.
"""

from __future__ import annotations

import torch


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
