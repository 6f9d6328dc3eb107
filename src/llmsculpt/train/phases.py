"""How Adapt-Accel splits the work: per-phase parameter targets and per-phase data shares."""

from __future__ import annotations

import math

from llmsculpt.errors import SculptError

ALLOCATIONS = ("linear", "constant", "cosine")


def phase_targets(original: int, target: int, phases: int) -> list[int]:
    """Parameter count after each phase: keep ratio P = (target/original)^(1/N) per phase."""
    if phases < 1:
        raise SculptError(f"phases must be >= 1, got {phases}")
    if not 0 < target < original:
        raise SculptError(f"target {target:,} must be between 0 and the model's {original:,} parameters")
    keep = (target / original) ** (1.0 / phases)
    out = [round(original * keep ** (i + 1)) for i in range(phases)]
    out[-1] = target
    return out


def data_shares(total: int, phases: int, how: str = "linear") -> list[int]:
    """Items of data for each phase, summing to ``total``.

    linear: phase i (1-based) gets ∝ i, i.e. 2i/(N(N+1)); constant: equal; cosine: ∝ 1 − cos(πi/(N+1)).
    """
    if how not in ALLOCATIONS:
        raise SculptError(f"data allocation must be one of {', '.join(ALLOCATIONS)}, got {how!r}")
    if how == "linear":
        weights = [i for i in range(1, phases + 1)]
    elif how == "constant":
        weights = [1.0] * phases
    else:
        weights = [1 - math.cos(math.pi * i / (phases + 1)) for i in range(1, phases + 1)]
    s = sum(weights)
    shares = [int(total * w / s) for w in weights]
    shares[-1] += total - sum(shares)  # rounding remainder goes to the last phase
    return shares
