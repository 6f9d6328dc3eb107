"""The local measuring engine on a one-layer tiny model, against statistics computed by hand.

The first decoder layer's q/k/v input is ``input_layernorm(embed(ids))``, which the test can compute
without hooks; gradients are compared with plain autograd on the model's own loss.
"""

from __future__ import annotations

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.importance import get_metric
from llmsculpt.measure import LocalEngine, Needs

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(4, 128, (3, 12), generator=torch.Generator().manual_seed(0))


def _q_input(model, ids) -> torch.Tensor:
    with torch.no_grad():
        x = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    return x.reshape(-1, x.shape[-1])


def _no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def test_needs_default_to_nothing_and_follow_the_metric():
    assert not Needs().any
    assert Needs.for_metric(get_metric("taylor_mix")) == Needs(grad=True, grad_sq=True)
    assert Needs.for_metric(get_metric("wanda"), layer_change="cosine") == Needs(act=True, layer_change="cosine")
    assert Needs(hessians="outputs").any and Needs(forward=True).any


def test_needs_refuse_unknown_values():
    with pytest.raises(SculptError, match="grad_params"):
        Needs(grad_params="everything")
    with pytest.raises(SculptError, match="hessians"):
        Needs(hessians="some")

    class Odd:
        name, needs = "odd", frozenset({"curvature"})

    with pytest.raises(SculptError, match="curvature"):
        Needs.for_metric(Odd())


def test_nothing_needed_runs_nothing(tiny1, ids):
    out = LocalEngine().measure(tiny1, ids, Needs())
    assert out.samples == 3 and out.loss is None and not out.grad and not out.act_sq and out.hessians is None


def test_activation_sums_of_squares_by_hand(tiny1, ids):
    out = LocalEngine().measure(tiny1, ids, Needs(act=True))
    want = _q_input(tiny1, ids).pow(2).sum(0)
    for name in (Q, "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"):
        torch.testing.assert_close(out.act_sq[name], want, rtol=1e-5, atol=1e-5)
    assert set(out.act_sq) == {n for n, m in tiny1.named_modules()
                               if n.startswith("model.layers.") and isinstance(m, torch.nn.Linear)}
    assert _no_hooks_left(tiny1)


def test_input_hessians_by_hand(tiny1, ids):
    out = LocalEngine().measure(tiny1, ids, Needs(hessians="all"))
    x = _q_input(tiny1, ids).double()
    assert set(out.hessians) == {(0, "o"), (0, "down"), (0, "attn_in"), (0, "mlp_in")}
    torch.testing.assert_close(out.hessians[(0, "attn_in")], x.T @ x, rtol=1e-6, atol=1e-6)
    assert out.hessians[(0, "down")].shape == (96, 96) and out.hessians[(0, "down")].dtype == torch.float64
    assert set(LocalEngine().measure(tiny1, ids, Needs(hessians="outputs")).hessians) == {(0, "o"), (0, "down")}


def test_gradient_is_that_of_the_mean_loss(tiny1, ids):
    out = LocalEngine(micro_batch=2).measure(tiny1, ids, Needs(grad=True))  # micro-batches of 2 and 1
    grads = {n: g.clone() for n, g in out.grad.items()}
    assert set(grads) == {n for n, p in tiny1.named_parameters() if n.startswith("model.layers.") and p.dim() == 2}
    tiny1.zero_grad()
    loss = tiny1(input_ids=ids, labels=ids).loss
    loss.backward()
    assert out.loss == pytest.approx(loss.item(), rel=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, dict(tiny1.named_parameters())[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_squared_gradients_sum_per_sample_squares(tiny1, ids):
    out = LocalEngine().measure(tiny1, ids, Needs(grad=True, grad_sq=True))
    w = dict(tiny1.named_parameters())[f"{Q}.weight"]
    per_sample = []
    for i in range(3):
        tiny1.zero_grad()
        tiny1(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).loss.backward()
        per_sample.append(w.grad.detach().clone())
    torch.testing.assert_close(out.grad_sq[f"{Q}.weight"], sum(g.pow(2) for g in per_sample), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(out.grad[f"{Q}.weight"], sum(per_sample) / 3, rtol=1e-4, atol=1e-7)


def test_measuring_leaves_the_model_as_it_was(tiny1, ids):
    tiny1.train()
    before = {n: p.detach().clone() for n, p in tiny1.named_parameters()}
    flags = {n: p.requires_grad for n, p in tiny1.named_parameters()}
    LocalEngine().measure(tiny1, ids, Needs(grad=True, act=True, moments=True, layer_change="cosine",
                                              hessians="all"))
    assert tiny1.training and _no_hooks_left(tiny1)
    for n, p in tiny1.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None and p.requires_grad == flags[n], n


def test_local_engine_decides_and_agrees_with_itself(tiny1):
    from llmsculpt.plan import Plan
    from llmsculpt.structures.shapes import architecture

    engine = LocalEngine()
    plan = Plan.keep_all(architecture(tiny1))
    assert engine.decides and engine.agree(plan) is plan


@pytest.mark.parametrize("metric", ["taylor", "taylor_vector", "fisher", "taylor_mix"])
def test_scores_reduced_while_gradients_flow_equal_scores_of_whole_gradients(tiny1, ids, metric):
    from llmsculpt.importance.groups import GroupReducer, score_groups

    m = get_metric(metric)
    needs = Needs.for_metric(m)
    whole = LocalEngine(micro_batch=2).measure(tiny1, ids, needs)
    dense = score_groups(tiny1, whole, m)
    streamed = LocalEngine(micro_batch=2).measure(tiny1, ids, needs, reducer=GroupReducer(tiny1, [m]))
    assert not streamed.grad and not streamed.grad_sq and streamed.reduced  # no whole gradient kept
    assert all(p.grad is None for p in tiny1.parameters())
    got = score_groups(tiny1, streamed, m)
    for a, b in zip(got.layers, dense.layers):
        for part in ("heads", "kv", "mlp"):
            assert torch.equal(getattr(a, part), getattr(b, part)), (metric, part)
