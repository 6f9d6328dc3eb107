"""Element scores of every weight metric on hand-made TensorStats."""

from __future__ import annotations

import pytest
import torch

from llmsculpt.importance import METRICS, TensorStats, get_metric
from llmsculpt.importance.base import require_stat
from llmsculpt.importance.fisher import Fisher, TaylorMix, fisher_term

W = torch.tensor([[1.0, -2.0, 0.5], [-0.25, 3.0, -1.0]])
G = torch.tensor([[0.5, 0.5, -2.0], [4.0, -1.0, 1.0]])
G2 = torch.tensor([[1.0, 2.0, 4.0], [0.0, 1.0, 0.5]])
ACT = torch.tensor([4.0, 1.0, 9.0])  # Σx² per input column: ‖X_j‖ = 2, 1, 3


def test_magnitude_metrics():
    s = TensorStats(weight=W)
    assert torch.equal(get_metric("l1").element(s), W.abs())
    assert torch.equal(get_metric("l2").element(s), W * W)


def test_taylor_element_and_vector():
    s = TensorStats(weight=W, grad=G)
    element, vector = get_metric("taylor"), get_metric("taylor_vector")
    assert torch.equal(element.element(s), torch.tensor([[0.5, 1.0, 1.0], [1.0, 3.0, 1.0]]))
    assert torch.equal(vector.element(s), torch.tensor([[0.5, -1.0, -1.0], [-1.0, -3.0, -1.0]]))
    assert not element.signed and vector.signed  # vector-wise Taylor: abs after the group sum


def test_fisher_is_half_w_squared_times_summed_squared_gradients():
    s = TensorStats(weight=W, grad_sq=G2)
    want = 0.5 * W.pow(2) * G2
    assert torch.equal(fisher_term(W, G2), want)
    assert torch.equal(get_metric("fisher").element(s), want)
    assert torch.equal(Fisher(second_scale=3.0).element(s), 3.0 * want)


def test_taylor_mix_is_first_plus_scaled_second_order():
    s = TensorStats(weight=W, grad=G, grad_sq=G2)
    first, second = (W * G).abs(), 0.5 * W.pow(2) * G2
    assert torch.equal(get_metric("taylor_mix").element(s), first + second)
    assert torch.allclose(TaylorMix(second_scale=0.5).element(s), first + 0.5 * second)


def test_wanda_scales_columns_by_input_norms():
    s = TensorStats(weight=W, act_sq=ACT)
    want = W.abs() * torch.tensor([2.0, 1.0, 3.0])[None, :]
    assert torch.equal(get_metric("wanda").element(s), want)


def test_wanda_falls_back_to_magnitude_without_activations_or_for_vectors():
    assert torch.equal(get_metric("wanda").element(TensorStats(weight=W)), W.abs())
    norm = torch.tensor([1.0, -0.5, 2.0])
    assert torch.equal(get_metric("wanda").element(TensorStats(weight=norm, act_sq=ACT)), norm.abs())


@pytest.mark.parametrize("name, field", [("taylor", "grad"), ("taylor_vector", "grad"),
                                         ("fisher", "grad_sq"), ("taylor_mix", "grad")])
def test_a_missing_statistic_is_named(name, field):
    with pytest.raises(RuntimeError, match=f"{name!r} needs {field!r}"):
        get_metric(name).element(TensorStats(weight=W))


def test_require_stat_returns_the_statistic():
    assert require_stat(TensorStats(weight=W, grad=G), "grad", "taylor") is G


def test_metrics_declare_what_they_need():
    needs = {name: set(get_metric(name).needs) for name in ("l1", "l2", "taylor", "taylor_vector", "fisher",
                                                            "taylor_mix", "wanda")}
    assert needs == {"l1": set(), "l2": set(), "taylor": {"grad"}, "taylor_vector": {"grad"},
                     "fisher": {"grad_sq"}, "taylor_mix": {"grad", "grad_sq"}, "wanda": {"act"}}


def test_needs_for_metric_asks_only_for_what_the_metric_declares():
    from llmsculpt.measure import Needs

    assert Needs.for_metric(get_metric("taylor")).grad
    assert not Needs.for_metric(get_metric("taylor")).grad_sq
    assert Needs.for_metric(get_metric("fisher")).grad_sq
    assert Needs.for_metric(get_metric("wanda")).act
    l1 = Needs.for_metric(get_metric("l1"))
    assert not (l1.grad or l1.grad_sq or l1.act)


def test_every_weight_metric_gives_scores_of_the_weight_shape():
    s = TensorStats(weight=W, grad=G, grad_sq=G2, act_sq=ACT)
    for name in ("l1", "l2", "taylor", "taylor_vector", "fisher", "taylor_mix", "wanda"):
        assert name in METRICS
        metric = get_metric(name)
        out = metric.element(s)
        assert out.shape == W.shape, name
        if not metric.signed:
            assert (out >= 0).all(), name


def test_an_unknown_metric_lists_the_known_ones():
    from llmsculpt.errors import SculptError

    with pytest.raises(SculptError) as err:
        get_metric("snip")
    assert "snip" in str(err.value) and "taylor" in str(err.value) and "wanda" in str(err.value)
