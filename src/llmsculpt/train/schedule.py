"""Learning-rate schedules as pure functions of the global step over the *whole* run, so one
schedule spans every phase of interleaved pruning and training (and resumes exactly)."""

from __future__ import annotations

import math

from llmsculpt.errors import SculptError


def wsd(step: int, total: int, *, lr: float = 2e-5, min_lr: float = 2e-6, warmup: float = 0.05, decay: float = 0.1) -> float:
    """Warm-up (linear from 0 over ``warmup`` of all steps), Stable (``lr``), Decay (linear to
    ``min_lr`` over the last ``decay`` of all steps)."""
    if total <= 0:
        raise SculptError("a schedule needs at least one step")
    w = max(1, round(warmup * total)) if warmup > 0 else 0
    d = max(1, round(decay * total)) if decay > 0 else 0
    if step < w:
        return lr * (step + 1) / w
    if step >= total - d:
        frac = (step - (total - d) + 1) / d
        return lr + (min_lr - lr) * min(frac, 1.0)
    return lr


def cosine(step: int, total: int, *, lr: float = 2e-5, min_lr: float = 2e-6, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` at the last step."""
    if total <= 0:
        raise SculptError("a schedule needs at least one step")
    w = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < w:
        return lr * (step + 1) / w
    progress = (step - w + 1) / max(1, total - w)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


SCHEDULES = {"wsd": wsd, "cosine": cosine}


def learning_rate(name: str, step: int, total: int, *, lr: float, min_lr: float) -> float:
    if name not in SCHEDULES:
        raise SculptError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](step, total, lr=lr, min_lr=min_lr)
