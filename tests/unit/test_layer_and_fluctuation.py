"""Layer importance (Adapt-Pruner, ShortGPT) and FLAP's fluctuation maths on small tensors."""

from __future__ import annotations

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.importance.fluctuation import Moments, fluctuation, standardise
from llmsculpt.importance.layer_importance import DISTANCES, LayerImportance, layer_change


def _moments(x: torch.Tensor) -> Moments:
    x = x.double()
    return Moments(total=x.sum(0), total_sq=x.pow(2).sum(0), count=x.shape[0])


def test_layer_change_per_distance():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    # an unchanged token scores −1 (unimportant); (0, 2) -> (3, 2) has cos = 4 / (2·√13)
    assert torch.allclose(layer_change(a, b, "cosine"), torch.tensor([-1.0, -2 / 13 ** 0.5]))
    assert torch.allclose(layer_change(a, b, "euclidean"), torch.tensor([0.0, 3.0]))
    assert torch.allclose(layer_change(a, b, "manhattan"), torch.tensor([0.0, 3.0]))
    with pytest.raises(SculptError) as err:
        layer_change(a, b, "kl")
    assert all(d in str(err.value) for d in DISTANCES)


def test_layer_importance_is_the_mean_over_every_token_seen():
    acc = LayerImportance(2, "euclidean")
    x = torch.zeros(1, 3, 4)  # [batch, seq, hidden]: three tokens
    acc.add(0, x, x + torch.tensor([1.0, 0, 0, 0]))  # three tokens moved by 1
    acc.add(0, x[:, :1], x[:, :1] + torch.tensor([0, 5.0, 0, 0]))  # one more token, moved by 5
    acc.add(1, x, x)
    assert torch.allclose(acc.values(), torch.tensor([(3 * 1 + 5) / 4, 0.0]))


def test_layer_importance_refuses_a_layer_without_tokens():
    acc = LayerImportance(2, "cosine")
    acc.add(0, torch.ones(2, 4), torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="saw no tokens"):
        acc.values()


def test_moments_give_the_mean_and_unbiased_variance():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7) + 3
    m = _moments(x)
    torch.testing.assert_close(m.mean, x.double().mean(0))
    torch.testing.assert_close(m.var, x.double().var(0, unbiased=True))
    constant = _moments(torch.full((1000, 3), 0.1))  # Σx² − (Σx)²/n may round below 0: clamped
    assert (constant.var >= 0).all() and constant.var.max() < 1e-12


def test_fluctuation_is_variance_times_squared_column_norm():
    x = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [5.0, 0.0, 2.0]])  # var 4, 0, 0
    w = torch.tensor([[1.0, 5.0, 7.0], [2.0, 5.0, 7.0]])  # ‖col‖² = 5, 50, 98
    assert torch.allclose(fluctuation(w, _moments(x)), torch.tensor([20.0, 0.0, 0.0]))


def test_standardise():
    out = standardise(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(out, torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(standardise(torch.tensor([4.0])), torch.zeros(1))


def test_flap_bias_keeps_the_expected_output():
    """W x̄ = W[:, kept] x̄[kept] + b, with b = W[:, removed] x̄[removed] (the bias FLAP adds)."""
    from llmsculpt.methods.flap import _mean_contribution

    gen = torch.Generator().manual_seed(1)
    w, mean = torch.randn(5, 8, generator=gen), torch.randn(8, generator=gen)
    removed = [1, 2, 6]
    kept = [c for c in range(8) if c not in removed]
    bias = _mean_contribution(w, mean, removed)
    torch.testing.assert_close(w[:, kept] @ mean[kept] + bias, w @ mean)
    assert torch.equal(_mean_contribution(w, mean, []), torch.zeros(5))
