"""round_to arithmetic: allowed kept counts, the nearest one, and apportioning across layers."""

from __future__ import annotations

import itertools

import pytest

from llmsculpt.allocation.rounding import allowed, apportion, head_step, nearest, neighbours


def test_allowed_is_the_multiples_up_to_current_plus_current_itself():
    assert allowed(96, 32) == [32, 64, 96]
    assert allowed(100, 32) == [32, 64, 96, 100]
    assert allowed(20, 32) == [20]  # below N: cannot be pruned
    assert allowed(5, 1) == [1, 2, 3, 4, 5]


def test_neighbours_and_nearest():
    opts = [32, 64, 96]
    assert neighbours(70, opts) == (64, 96)
    assert neighbours(10, opts) == (32, 32) and neighbours(120, opts) == (96, 96)
    assert nearest(70, opts) == 64 and nearest(90, opts) == 96
    assert nearest(80, opts) == 96  # a tie keeps the larger count
    assert nearest(64, opts) == 64


def test_head_step():
    assert head_step(32, 64) == 1  # any head count × 64 is a multiple of 32
    assert head_step(32, 16) == 2  # heads × 16 must be a multiple of 32
    assert head_step(128, 16) == 8
    assert head_step(128, 16, heads_per_unit=2) == 4  # a unit is 2 heads
    assert head_step(1, 16) == 1


def test_apportion_docstring_example():
    assert apportion({0: 70, 1: 70}, {0: [32, 64, 96], 1: [32, 64, 96]}, {0: 1, 1: 1}, excess=-20) == {0: 96, 1: 64}


def _error(ideal, keep, cost, excess):
    return abs(sum((ideal[k] - keep[k]) * cost[k] for k in ideal) - excess)


@pytest.mark.parametrize("ideal", [{0: 70.0, 1: 70.0, 2: 70.0}, {0: 40.0, 1: 81.0, 2: 50.0},
                                   {0: 33.0, 1: 95.0, 2: 63.0}])
@pytest.mark.parametrize("excess", [0.0, -30.0, 25.0])
def test_apportion_is_as_close_as_the_neighbour_choices_allow(ideal, excess):
    options = dict.fromkeys(ideal, [32, 64, 96])
    cost = {0: 1.0, 1: 2.0, 2: 1.0}
    keep = apportion(ideal, options, cost, excess)
    for k in ideal:
        assert keep[k] in neighbours(ideal[k], options[k])
    # never worse than rounding each key on its own
    per_key = {k: nearest(ideal[k], options[k]) for k in ideal}
    assert _error(ideal, keep, cost, excess) <= _error(ideal, per_key, cost, excess) + 1e-9
    # and, with three keys, the best of all neighbour choices is at most one step better
    best = min(_error(ideal, dict(zip(ideal, choice)), cost, excess)
               for choice in itertools.product(*(neighbours(ideal[k], options[k]) for k in ideal)))
    assert _error(ideal, keep, cost, excess) <= best + 32 * max(cost.values())


def test_apportion_with_nothing_to_choose_keeps_the_only_option():
    assert apportion({0: 20.0}, {0: [20]}, {0: 1.0}, 100.0) == {0: 20}
