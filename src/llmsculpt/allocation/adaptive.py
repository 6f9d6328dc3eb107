"""Adapt-Pruner allocation, as the paper defines it: cumulative per-layer sparsity.

Each step t, layer i's sparsity moves by the common increment minus its own offset,
S_i[t] = clip(S_i[t−1] + ΔS[t] − a·δ·Î_i(t)), where Î is the normalised layer importance, δ is
the mean per-step increment (the removal ratio of the prunable layers ÷ T) and a is the amplitude
relative to it (a = 1: a layer with Î = +1 is not pruned that step, one with Î = −1 twice the
mean). ΔS[t] is found by the exact parameter-target solver, so the offsets add up over the steps:
a layer that stays unimportant keeps losing. We store the state as offsets from the solver's
common S (S_i = S − offsets_i), which is what ``solve_uniform_offset`` takes.

Normalisations (``NORMS``): ``max`` (the paper: centre, divide by max |Î|; one outlier layer takes
±1 and flattens all others), ``rank`` (ranks spread evenly over [−1, 1]; immune to outliers),
``mad`` (centre on the median, divide by 2 × 1.4826·MAD, clip to [−1, 1]) and ``inner`` (``max``
fitted on all but the first and last layer, those two clipped to [−1, 1]).
"""

from __future__ import annotations

import torch

from llmsculpt.errors import SculptError

NORMS = ("max", "rank", "mad", "inner")


def normalise_importance(importance: torch.Tensor, layers: list[int], how: str = "rank") -> torch.Tensor:
    """Per-layer Î in [−1, 1] for the selected layers (others 0); all-equal importances give 0."""
    if how not in NORMS:
        raise SculptError(f"unknown normalisation {how!r}; choose one of: {', '.join(NORMS)}")
    out = torch.zeros(importance.shape, dtype=torch.float32)
    if not layers:
        return out
    x = importance[layers].double()
    if float(x.max() - x.min()) <= 1e-12:
        return out
    if how == "rank":
        order = torch.argsort(x, stable=True)
        ranks = torch.empty_like(x)
        ranks[order] = torch.arange(len(x), dtype=x.dtype)
        for v in torch.unique(x):  # ties share their mean rank
            tie = x == v
            ranks[tie] = ranks[tie].mean()
        y = 2 * ranks / max(1, len(x) - 1) - 1
    elif how == "mad":
        med = x.median()
        mad = (x - med).abs().median() * 1.4826
        y = ((x - med) / (2 * mad)).clamp(-1, 1) if mad > 1e-12 else torch.sign(x - med)
    else:
        inner = x[1:-1] if how == "inner" and len(x) > 3 else x
        centred = x - inner.mean()
        scale = (inner - inner.mean()).abs().max()
        y = (centred / scale).clamp(-1, 1) if scale > 1e-12 else torch.sign(centred)
    out[layers] = y.float()
    return out


def step_offsets(norm: torch.Tensor, layers: list[int], amplitude: float, increment: float) -> dict[int, float]:
    """This step's offsets a·δ·Î_i (δ = ``increment``, the mean per-step sparsity increment)."""
    return {i: float(amplitude * increment * norm[i]) for i in layers}


def accumulate(previous: dict[int, float], step: dict[int, float]) -> dict[int, float]:
    """Cumulative offsets: the sum of every step's offsets so far (Σ_t a·δ·Î_i(t))."""
    return {i: previous.get(i, 0.0) + v for i, v in step.items()}


def clip_state(offsets: dict[int, float], s: float, *, low: float = 0.0, high: float = 0.99) -> dict[int, float]:
    """Offsets such that every S − offsets_i lies in [low, high]: the paper clips S_i[t] each step,
    so a layer held at 0 (or at the maximum) does not carry an unbounded debt into later steps."""
    return {i: s - min(max(s - v, low), high) for i, v in offsets.items()}


def adaptive_offsets(norm_importance: torch.Tensor, layers: list[int], amplitude: float) -> dict[int, float]:
    """One-step offsets for ``solve_uniform_offset``: layer i's sparsity is S − A·Î_i (A absolute)."""
    return {i: float(amplitude * norm_importance[i]) for i in layers}
