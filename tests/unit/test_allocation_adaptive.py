"""Adapt-Pruner allocation: importance normalisations, cumulative offsets, clipping."""

from __future__ import annotations

import pytest
import torch

from llmsculpt.allocation.adaptive import (
    NORMS,
    accumulate,
    adaptive_offsets,
    clip_state,
    normalise_importance,
    step_offsets,
)
from llmsculpt.errors import SculptError

IMP = torch.tensor([0.1, 0.4, 0.2, 0.3, 1.0])


def test_rank_spreads_ranks_evenly_over_minus_one_to_one():
    out = normalise_importance(IMP, [0, 1, 2, 3, 4], "rank")
    assert torch.allclose(out, torch.tensor([-1.0, 0.5, -0.5, 0.0, 1.0]))


def test_rank_gives_ties_their_mean_rank():
    out = normalise_importance(torch.tensor([0.2, 0.5, 0.5, 0.9]), [0, 1, 2, 3], "rank")
    assert torch.allclose(out, torch.tensor([-1.0, 0.0, 0.0, 1.0]))


def test_max_centres_on_the_mean_and_divides_by_the_largest_deviation():
    x = IMP.double()
    want = (x - x.mean()) / (x - x.mean()).abs().max()
    out = normalise_importance(IMP, [0, 1, 2, 3, 4], "max")
    assert torch.allclose(out, want.float())
    assert float(out.abs().max()) == pytest.approx(1.0)  # the outlier takes ±1 ...
    assert float(out[:4].abs().max()) < 0.6  # ... and flattens the others


def test_mad_centres_on_the_median_and_clips():
    x = IMP.double()
    med = x.median()
    mad = (x - med).abs().median() * 1.4826
    want = ((x - med) / (2 * mad)).clamp(-1, 1)
    out = normalise_importance(IMP, [0, 1, 2, 3, 4], "mad")
    assert torch.allclose(out, want.float())
    assert float(out[4]) == 1.0  # the outlier is clipped, the median layer is 0
    assert float(out[2]) == pytest.approx(-float(0.1 / (2 * mad)), rel=1e-5)


def test_inner_fits_on_all_but_the_first_and_last_layer():
    imp = torch.tensor([5.0, 0.1, 0.4, 0.2, 0.3, -5.0])
    x = imp.double()
    inner = x[1:-1]
    want = ((x - inner.mean()) / (inner - inner.mean()).abs().max()).clamp(-1, 1)
    out = normalise_importance(imp, list(range(6)), "inner")
    assert torch.allclose(out, want.float())
    assert out[0] == 1.0 and out[-1] == -1.0


@pytest.mark.parametrize("how", NORMS)
def test_every_normalisation_is_bounded_zero_outside_the_selection_and_orders_like_importance(how):
    out = normalise_importance(IMP, [1, 2, 4], how)
    assert out[0] == 0 and out[3] == 0
    assert out.abs().max() <= 1.0 + 1e-6
    assert out[2] < out[1] < out[4]  # same order as 0.2 < 0.4 < 1.0
    assert out.dtype == torch.float32


@pytest.mark.parametrize("how", NORMS)
def test_equal_importances_or_no_layers_give_zeros(how):
    assert torch.equal(normalise_importance(torch.full((4,), 0.3), [0, 1, 2, 3], how), torch.zeros(4))
    assert torch.equal(normalise_importance(IMP, [], how), torch.zeros(5))


def test_unknown_normalisation_lists_the_choices():
    with pytest.raises(SculptError) as err:
        normalise_importance(IMP, [0, 1], "zscore")
    assert all(n in str(err.value) for n in NORMS)


def test_step_offsets_are_amplitude_times_increment_times_importance():
    norm = torch.tensor([-1.0, 0.5, 0.0, 1.0])
    assert step_offsets(norm, [0, 1, 3], 2.0, 0.05) == pytest.approx({0: -0.1, 1: 0.05, 3: 0.1})
    assert adaptive_offsets(norm, [0, 3], 0.2) == pytest.approx({0: -0.2, 3: 0.2})


def test_offsets_accumulate_over_steps():
    norm = torch.tensor([-1.0, 1.0, 0.0])
    state: dict[int, float] = {}
    for _ in range(3):
        state = accumulate(state, step_offsets(norm, [0, 1, 2], 1.0, 0.1))
    assert state == pytest.approx({0: -0.3, 1: 0.3, 2: 0.0})  # an unimportant layer keeps losing
    assert accumulate({0: 0.1, 5: 1.0}, {0: 0.2}) == pytest.approx({0: 0.3})  # only stepped layers stay


def test_clip_state_keeps_every_layer_sparsity_in_bounds():
    s = 0.3
    offsets = {0: 0.5, 1: -0.9, 2: 0.1}  # sparsities -0.2, 1.2, 0.2
    clipped = clip_state(offsets, s, low=0.0, high=0.99)
    sparsities = {i: s - v for i, v in clipped.items()}
    assert sparsities == pytest.approx({0: 0.0, 1: 0.99, 2: 0.2})
    assert clipped[2] == pytest.approx(0.1)  # in-range layers unchanged
