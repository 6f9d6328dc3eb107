"""Learning-rate schedules over a whole run, and Adapt-Accel's per-phase targets and data shares."""

from __future__ import annotations

import math

import pytest

from llmsculpt.errors import SculptError
from llmsculpt.train.phases import ALLOCATIONS, data_shares, phase_targets
from llmsculpt.train.schedule import SCHEDULES, learning_rate, wsd

LR, MIN = 1e-3, 1e-4


def _curve(name: str, total: int) -> list[float]:
    return [learning_rate(name, s, total, lr=LR, min_lr=MIN) for s in range(total)]


def test_wsd_warms_up_holds_then_decays_to_min_lr():
    total = 100  # warm-up 5 steps, decay the last 10
    lrs = _curve("wsd", total)
    assert lrs[:5] == pytest.approx([LR * (s + 1) / 5 for s in range(5)])  # linear from 0
    assert lrs[5:90] == pytest.approx([LR] * 85)  # stable
    assert lrs[90:] == pytest.approx([LR + (MIN - LR) * (s + 1) / 10 for s in range(10)])  # linear down
    assert lrs[-1] == pytest.approx(MIN)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:5]))
    assert all(a > b for a, b in zip(lrs[89:], lrs[90:]))


def test_wsd_without_warmup_or_decay_is_flat():
    assert [wsd(s, 10, lr=LR, min_lr=MIN, warmup=0, decay=0) for s in range(10)] == [LR] * 10


def test_cosine_endpoints_and_monotone_decay():
    total = 100  # warm-up 5 steps
    lrs = _curve("cosine", total)
    assert lrs[0] == pytest.approx(LR / 5)
    assert lrs[4] == pytest.approx(LR)  # end of the warm-up: the peak
    assert lrs[-1] == pytest.approx(MIN)  # the last step reaches min_lr
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    mid = 5 + (total - 5) // 2 - 1  # half-way through the decay: the mean of lr and min_lr
    progress = (mid - 5 + 1) / (total - 5)
    assert lrs[mid] == pytest.approx(MIN + 0.5 * (LR - MIN) * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_stay_within_zero_and_lr(name):
    for total in (1, 2, 7, 50):
        lrs = _curve(name, total)
        assert all(0 < x <= LR * (1 + 1e-12) for x in lrs), (total, lrs)


def test_bad_schedule_inputs_are_user_errors():
    with pytest.raises(SculptError, match="unknown schedule 'linear'"):
        learning_rate("linear", 0, 10, lr=LR, min_lr=MIN)
    for name in SCHEDULES:
        with pytest.raises(SculptError, match="at least one step"):
            learning_rate(name, 0, 0, lr=LR, min_lr=MIN)


# ---- Adapt-Accel phases -------------------------------------------------------------------
@pytest.mark.parametrize("how", ALLOCATIONS)
@pytest.mark.parametrize("total, phases", [(1000, 5), (17, 4), (3, 3), (10, 1)])
def test_data_shares_sum_to_the_total(how, total, phases):
    shares = data_shares(total, phases, how)
    assert len(shares) == phases and sum(shares) == total and min(shares) >= 0


def test_data_shares_shapes():
    assert data_shares(150, 5, "linear") == [10, 20, 30, 40, 50]  # ∝ i
    assert data_shares(100, 4, "constant") == [25, 25, 25, 25]
    cos = data_shares(10_000, 5, "cosine")
    assert all(a < b for a, b in zip(cos, cos[1:]))  # ∝ 1 − cos(πi/(N+1)): increasing
    want = [1 - math.cos(math.pi * i / 6) for i in range(1, 6)]
    # floors, with the rounding remainder (< one item per phase) added to the last phase
    assert cos == pytest.approx([10_000 * w / sum(want) for w in want], abs=5.0)
    with pytest.raises(SculptError, match="data allocation"):
        data_shares(10, 2, "random")


def test_phase_targets_shrink_geometrically_to_the_target():
    targets = phase_targets(1000, 512, 3)
    assert targets[-1] == 512
    assert all(a > b for a, b in zip([1000] + targets, targets))  # strictly decreasing
    assert targets == [800, 640, 512]  # keep ratio (512/1000)^(1/3) = 0.8 per phase
    assert phase_targets(1000, 300, 1) == [300]


def test_phase_targets_reject_impossible_requests():
    with pytest.raises(SculptError, match="phases must be >= 1"):
        phase_targets(1000, 500, 0)
    for bad in (0, 1000, 1200):
        with pytest.raises(SculptError, match="must be between 0"):
            phase_targets(1000, bad, 2)
