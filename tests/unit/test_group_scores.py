"""Group scores from element scores: aggregation, block reduction and score_groups by hand.

The hand computations below loop over heads and channels explicitly, so they check the slicing
(which rows of q_proj belong to head h, which columns of o_proj, which K/V group serves it) as well
as the sums.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.importance import get_metric
from llmsculpt.importance.groups import AGGREGATIONS, _reduce, aggregate, score_groups

HD = 16  # tiny-llama head_dim


# ---- aggregate ------------------------------------------------------------------------------
def test_aggregate_each_rule_by_hand():
    a, b = torch.tensor([1.0, 4.0, 2.0]), torch.tensor([3.0, 1.0, 8.0])
    assert torch.equal(aggregate([a, b], "sum"), torch.tensor([4.0, 5.0, 10.0]))
    assert torch.equal(aggregate([a, b], "mean"), torch.tensor([2.0, 2.5, 5.0]))
    assert torch.equal(aggregate([a, b], "max"), torch.tensor([3.0, 4.0, 8.0]))
    assert torch.equal(aggregate([a, b], "last"), b)
    geo = torch.tensor([math.sqrt(3.0), 2.0, 4.0])  # prod as a geometric mean
    assert torch.allclose(aggregate([a, b], "prod"), geo, rtol=1e-6)


def test_aggregate_prod_keeps_the_ranking_of_the_product_without_overflow():
    per = [torch.tensor([1e30, 2e30, 3e30]), torch.tensor([1e30, 1e30, 0.5e30])]
    out = aggregate(per, "prod")
    assert torch.isfinite(out).all()
    products = [1 * 1, 2 * 1, 3 * 0.5]
    assert torch.argsort(out).tolist() == sorted(range(3), key=products.__getitem__)
    # zeros are clamped, not turned into -inf / nan
    assert torch.isfinite(aggregate([torch.zeros(2), torch.ones(2)], "prod")).all()


def test_aggregate_works_in_fp32_whatever_the_input_dtype():
    out = aggregate([torch.ones(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.float16)], "sum")
    assert out.dtype == torch.float32


def test_aggregate_unknown_rule_names_the_choices():
    with pytest.raises(SculptError) as err:
        aggregate([torch.ones(2)], "median")
    assert "median" in str(err.value) and all(a in str(err.value) for a in AGGREGATIONS)


# ---- _reduce --------------------------------------------------------------------------------
def test_reduce_rows_sums_each_row_then_blocks_of_rows():
    e = torch.arange(24, dtype=torch.float32).reshape(6, 4)  # [out=6, in=4]
    row_sums = e.sum(1)
    assert torch.equal(_reduce(e, 0, 1, False), row_sums)
    assert torch.equal(_reduce(e, 0, 2, False), torch.stack([row_sums[0:2].sum(), row_sums[2:4].sum(),
                                                            row_sums[4:6].sum()]))
    assert torch.equal(_reduce(e, 0, 3, False), torch.stack([row_sums[:3].sum(), row_sums[3:].sum()]))


def test_reduce_columns_sums_each_column_then_blocks_of_columns():
    e = torch.arange(24, dtype=torch.float32).reshape(4, 6)  # [out=4, in=6]
    col_sums = e.sum(0)
    assert torch.equal(_reduce(e, 1, 1, False), col_sums)
    assert torch.equal(_reduce(e, 1, 2, False), col_sums.reshape(3, 2).sum(1))


def test_reduce_of_a_vector_is_block_sums():
    e = torch.tensor([1.0, -2.0, 3.0, -4.0])
    assert torch.equal(_reduce(e, 0, 2, False), torch.tensor([-1.0, -1.0]))


def test_reduce_signed_takes_the_absolute_value_after_the_sum():
    e = torch.tensor([[1.0, -3.0], [2.0, 2.0], [-5.0, 1.0], [1.0, 0.0]])  # rows: -2, 4, -4, 1
    assert torch.equal(_reduce(e, 0, 1, True), torch.tensor([2.0, 4.0, 4.0, 1.0]))
    assert torch.equal(_reduce(e, 0, 2, True), torch.tensor([2.0, 3.0]))  # |-2+4|, |-4+1|
    # not the sum of absolute values
    assert not torch.equal(_reduce(e, 0, 2, True), _reduce(e.abs(), 0, 2, False))


# ---- score_groups on a one-layer tiny model, by hand ------------------------------------------
def _parts(model):
    layer = model.model.layers[0]
    a, m = layer.self_attn, layer.mlp
    return layer, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, \
        m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight


def _hand_scores(q, k, v, o, gate, up, down, *, signed: bool, kv_map=(0, 0, 1, 1)):
    """Per-tensor sums over each structure's slice (abs after the sum when signed), then summed."""
    f = (lambda t: t.sum().abs()) if signed else (lambda t: t.sum())
    n_heads, n_kv = q.shape[0] // HD, k.shape[0] // HD
    q_h = [f(q[h * HD:(h + 1) * HD, :]) for h in range(n_heads)]
    o_h = [f(o[:, h * HD:(h + 1) * HD]) for h in range(n_heads)]
    heads = torch.stack([q_h[h] + o_h[h] for h in range(n_heads)])
    kv = []
    for j in range(n_kv):
        served = [h for h in range(n_heads) if kv_map[h] == j]
        kv.append(sum(q_h[h] for h in served) + f(k[j * HD:(j + 1) * HD, :]) + f(v[j * HD:(j + 1) * HD, :])
                  + sum(o_h[h] for h in served))
    mlp = torch.stack([f(gate[c, :]) + f(up[c, :]) + f(down[:, c]) for c in range(gate.shape[0])])
    return heads, torch.stack(kv), mlp


def _no_stats():
    return SimpleNamespace(grad={}, grad_sq={}, act_sq={})


def test_score_groups_l1_by_hand(tiny1):
    _, q, k, v, o, gate, up, down = _parts(tiny1)
    with torch.no_grad():
        want = _hand_scores(q.abs(), k.abs(), v.abs(), o.abs(), gate.abs(), up.abs(), down.abs(), signed=False)
    got = score_groups(tiny1, _no_stats(), get_metric("l1"))
    assert len(got.layers) == 1 and got.hidden is None
    ls = got.layers[0]
    assert ls.heads.shape == (4,) and ls.kv.shape == (2,) and ls.mlp.shape == (96,)
    for g, w in zip((ls.heads, ls.kv, ls.mlp), want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _hand_set_grads(model, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()
            if ".layers." in n and p.dim() == 2}


def test_score_groups_taylor_uses_the_given_gradients(tiny1):
    grads = _hand_set_grads(tiny1)
    stats = SimpleNamespace(grad=grads, grad_sq={}, act_sq={})
    _, *w = _parts(tiny1)
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    with torch.no_grad():
        e = [(t * grads[f"model.layers.0.{n}.weight"]).abs() for t, n in zip(w, names)]
        want = _hand_scores(*e, signed=False)
        signed_e = [t * grads[f"model.layers.0.{n}.weight"] for t, n in zip(w, names)]
        want_signed = _hand_scores(*signed_e, signed=True)
    got = score_groups(tiny1, stats, get_metric("taylor")).layers[0]
    for g, x in zip((got.heads, got.kv, got.mlp), want):
        torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-5)
    got_v = score_groups(tiny1, stats, get_metric("taylor_vector")).layers[0]
    for g, x in zip((got_v.heads, got_v.kv, got_v.mlp), want_signed):
        torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-5)
    assert (got_v.mlp <= got.mlp + 1e-5).all()  # |Σ| ≤ Σ|·|


def test_score_groups_wanda_uses_the_given_input_norms(tiny1):
    gen = torch.Generator().manual_seed(5)
    act = {n: torch.rand(m.in_features, generator=gen) + 0.1 for n, m in tiny1.named_modules()
           if ".layers." in n and isinstance(m, torch.nn.Linear)}
    stats = SimpleNamespace(grad={}, grad_sq={}, act_sq=act)
    _, *w = _parts(tiny1)
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    with torch.no_grad():
        e = [t.abs() * act[f"model.layers.0.{n}"].sqrt()[None, :] for t, n in zip(w, names)]
        want = _hand_scores(*e, signed=False)
    got = score_groups(tiny1, stats, get_metric("wanda")).layers[0]
    for g, x in zip((got.heads, got.kv, got.mlp), want):
        torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-5)


def test_score_groups_last_aggregation_is_the_output_side_tensor(tiny1):
    _, q, k, v, o, gate, up, down = _parts(tiny1)
    got = score_groups(tiny1, _no_stats(), get_metric("l1"), aggregation="last").layers[0]
    with torch.no_grad():
        o_h = torch.stack([o[:, h * HD:(h + 1) * HD].abs().sum() for h in range(4)])
        o_kv = torch.stack([o_h[0] + o_h[1], o_h[2] + o_h[3]])
        down_c = down.abs().sum(0)
    torch.testing.assert_close(got.heads, o_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.kv, o_kv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.mlp, down_c, rtol=1e-5, atol=1e-5)


def test_score_groups_hidden_channels_by_hand(tiny1):
    layer, q, k, v, o, gate, up, down = _parts(tiny1)
    got = score_groups(tiny1, _no_stats(), get_metric("l1"), hidden=True).hidden
    with torch.no_grad():
        want = tiny1.model.embed_tokens.weight.abs().sum(0)
        want = want + layer.input_layernorm.weight.abs() + layer.post_attention_layernorm.weight.abs()
        for t in (q, k, v, gate, up):  # hidden is their input: columns
            want = want + t.abs().sum(0)
        for t in (o, down):  # hidden is their output: rows
            want = want + t.abs().sum(1)
        want = want + tiny1.model.norm.weight.abs() + tiny1.lm_head.weight.abs().sum(0)
    assert got.shape == (64,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_score_groups_rejects_an_unknown_aggregation(tiny1):
    with pytest.raises(SculptError, match="unknown aggregation"):
        score_groups(tiny1, _no_stats(), get_metric("l1"), aggregation="median")
