"""Widths that are multiples of N (``round_to``), chosen by the allocators rather than fixed afterwards.

llama.cpp quantises a 2-D weight row by row in blocks of 32 values, and a row is as long as the
weight's *input* dimension: the hidden size for q/k/v/gate/up (and the embeddings), n_heads·head_dim
for o_proj, the MLP width for down_proj. With ``round_to = N`` every width a plan changes is a
multiple of N:

- an MLP width is a multiple of N;
- a query-head count is a multiple of N / gcd(N, head_dim), so n_heads·head_dim is a multiple of N.
  With a head_dim of 64 or 128 and N = 32 every count qualifies. K/V head counts are free, because
  k/v rows are as long as the hidden size;
- the hidden (stem) width, where it is pruned (pruning-aware training), is a multiple of N.

A width that is not a multiple may stay as it is, unpruned: pruning moves it to a multiple of N,
never to another non-multiple, never to 0 and never above its current value. A width below N
cannot be pruned. So a model whose widths are multiples keeps them multiples at every step of an
iterative run. A source whose own widths are not multiples keeps the untouched ones as they were;
no plan can fix those without growing them.

Rounding each layer on its own moves the total by up to N/2 channels per layer. ``apportion``
instead picks the allowed count just below or just above each layer's unrounded one, so that the
total removed comes as close to the target as possible (largest-remainder style).
"""

from __future__ import annotations

import math
from typing import Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


def head_step(round_to: int, head_dim: int, heads_per_unit: int = 1) -> int:
    """Attention units (a K/V group, or one query head from every group) must be kept in multiples
    of this, so that kept query heads × ``head_dim`` is a multiple of ``round_to``."""
    heads = round_to // math.gcd(round_to, head_dim)
    return heads // math.gcd(heads, max(1, heads_per_unit))


def allowed(current: int, step: int) -> list[int]:
    """Kept counts allowed for a structure of ``current`` units, ascending: the multiples of
    ``step`` up to ``current``, and ``current`` itself (left unpruned)."""
    out = list(range(step, current + 1, step))
    if not out or out[-1] != current:
        out.append(current)
    return out


def neighbours(ideal: float, options: list[int]) -> tuple[int, int]:
    """The allowed counts just below and just above ``ideal`` (clamped to the ends)."""
    lower = max((o for o in options if o <= ideal), default=options[0])
    upper = min((o for o in options if o >= ideal), default=options[-1])
    return lower, upper


def nearest(ideal: float, options: list[int]) -> int:
    """The allowed count nearest to ``ideal``; a tie keeps the larger count."""
    lower, upper = neighbours(ideal, options)
    return lower if ideal - lower < upper - ideal else upper


def apportion(ideal: dict[K, float], options: dict[K, list[int]], cost: dict[K, float], excess: float = 0.0) -> dict[K, int]:
    """A kept count per key, the allowed one just below or just above ``ideal[key]``, such that
    the parameters removed beyond the ideal, Σ (ideal − kept)·cost, come as close as possible to
    ``excess``.

    Start from the nearest count everywhere. Then, while it brings the total closer, move one key
    to its other neighbour, the one whose ideal lies nearest that neighbour. Every move strictly
    shrinks the error, so the loop ends.

    Example:
        >>> apportion({0: 70, 1: 70}, {0: [32, 64, 96], 1: [32, 64, 96]}, {0: 1, 1: 1}, excess=-20)
        {0: 96, 1: 64}
    """
    bounds = {k: neighbours(ideal[k], options[k]) for k in ideal}
    keep = {k: nearest(ideal[k], options[k]) for k in ideal}
    err = sum((ideal[k] - keep[k]) * cost[k] for k in ideal) - excess
    while True:
        best = None
        for k, (lo, hi) in bounds.items():
            if lo == hi:
                continue
            if err > 0 and keep[k] == lo:  # removed too much: keep more here
                new, new_err, gap = hi, err - (hi - lo) * cost[k], hi - ideal[k]
            elif err < 0 and keep[k] == hi:  # removed too little: keep less here
                new, new_err, gap = lo, err + (hi - lo) * cost[k], ideal[k] - lo
            else:
                continue
            rank = (abs(new_err), gap)
            if best is None or rank < best[0]:
                best = (rank, k, new, new_err)
        if best is None or abs(best[3]) >= abs(err):
            return keep
        _, k, keep[k], err = best
