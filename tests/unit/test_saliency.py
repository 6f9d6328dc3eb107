"""EfficientLLM's mini-group saliency and AdaPruner's importance mix, on small tensors.

The OBC saliency of a group is the layer-output error that the OBS update leaves, so it is checked
against ``obs_remove_columns``: tr(ΔW H ΔWᵀ) with the same damped Hessian.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from llmsculpt.importance.groups import GroupScores, LayerScores
from llmsculpt.importance.obs import damped, obs_remove_columns
from llmsculpt.importance.saliency import obc_saliency, saliency, unit_params
from llmsculpt.structures.shapes import architecture

HD = 16


def _spd(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n, generator=gen, dtype=torch.float64) @ torch.randn(n, 3 * n, generator=gen,
                                                                            dtype=torch.float64)
    return x @ x.T


def _left_error(w: torch.Tensor, h: torch.Tensor, cols: list[int]) -> float:
    delta = w.double() - obs_remove_columns(w, h, cols).double()
    return float(torch.trace(delta @ damped(h.double()) @ delta.T))


def test_unit_params_are_what_one_group_frees(arch):
    sizes = unit_params(arch)
    assert sizes["attention"] == 2 * arch.hidden * arch.head_dim  # q rows + o columns of one head
    assert sizes["mlp"] == 3 * arch.hidden
    assert sizes["stem"] == arch.param_count() - replace(arch, hidden=arch.hidden - 1).param_count()


def test_taylor_saliency_by_hand(tiny1):
    arch = architecture(tiny1)
    gen = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(p.shape, generator=gen) for n, p in tiny1.named_parameters()}
    sal = saliency(tiny1, arch, "taylor", grads=grads)
    sizes = unit_params(arch)
    layer = tiny1.model.layers[0]
    eo = (layer.self_attn.o_proj.weight * grads["model.layers.0.self_attn.o_proj.weight"]).abs().detach()
    ed = (layer.mlp.down_proj.weight * grads["model.layers.0.mlp.down_proj.weight"]).abs().detach()
    ee = (tiny1.model.embed_tokens.weight * grads["model.embed_tokens.weight"]).abs().detach()
    heads = torch.stack([eo[:, h * HD:(h + 1) * HD].sum() for h in range(4)]) / sizes["attention"]
    torch.testing.assert_close(sal.heads[0], heads)
    torch.testing.assert_close(sal.mlp[0], ed.sum(0) / sizes["mlp"])
    torch.testing.assert_close(sal.stem, (eo.sum(1) + ed.sum(1) + ee.sum(0)) / sizes["stem"])


def test_obc_saliency_is_the_error_the_obs_update_leaves(tiny1):
    arch = architecture(tiny1)
    hessians = {(0, "o"): _spd(64, 1), (0, "down"): _spd(96, 2), (0, "attn_in"): _spd(64, 3),
                (0, "mlp_in"): _spd(64, 4)}
    sal = obc_saliency(tiny1, arch, hessians)
    sizes = unit_params(arch)
    o = tiny1.model.layers[0].self_attn.o_proj.weight.detach()
    down = tiny1.model.layers[0].mlp.down_proj.weight.detach()
    for h in range(4):
        cols = list(range(h * HD, (h + 1) * HD))
        want = _left_error(o, hessians[(0, "o")], cols) / sizes["attention"]
        assert float(sal.heads[0][h]) == pytest.approx(want, rel=1e-4)
    for c in (0, 17, 95):
        want = _left_error(down, hessians[(0, "down")], [c]) / sizes["mlp"]
        assert float(sal.mlp[0][c]) == pytest.approx(want, rel=1e-4)


# ---- AdaPruner's mix ----------------------------------------------------------------------
def _scores(heads, kv, mlp) -> GroupScores:
    return GroupScores(layers=[LayerScores(torch.tensor(heads), torch.tensor(kv), torch.tensor(mlp))])


def test_adapruner_mix_by_hand():
    from llmsculpt.importance.adapruner import SampleTerms, mix

    t1 = SampleTerms(vector=_scores([1.0, -2.0], [1.0], [2.0, -4.0]), element=_scores([1.0, 2.0], [1.0], [2.0, 4.0]),
                     fisher=_scores([0.5, 0.5], [0.5], [1.0, 1.0]))
    t2 = SampleTerms(vector=_scores([1.0, 1.0], [-3.0], [-2.0, 2.0]), element=_scores([1.0, 1.0], [3.0], [2.0, 2.0]),
                     fisher=_scores([0.5, 1.5], [1.5], [1.0, 3.0]))
    got = mix([t1, t2], alpha1=0.5, alpha2=2.0, lambda1=3.0, lambda2=0.25).layers[0]
    # combined terms, each divided by its mean |MLP score|
    vector = {"heads": [2.0, 1.0], "kv": [2.0], "mlp": [0.0, 2.0]}  # |Σ_s| (signed sums, abs after)
    element = {"heads": [2.0, 3.0], "kv": [4.0], "mlp": [4.0, 6.0]}
    fisher = {"heads": [1.0, 2.0], "kv": [2.0], "mlp": [2.0, 4.0]}
    scale = {"v": 1.0, "e": 5.0, "f": 3.0}
    for part in ("heads", "kv", "mlp"):
        want = [0.5 * 3.0 * v / scale["v"] + 2.0 * (e / scale["e"] + 0.25 * f / scale["f"])
                for v, e, f in zip(vector[part], element[part], fisher[part])]
        torch.testing.assert_close(getattr(got, part), torch.tensor(want), msg=part)


def test_adapruner_per_sample_terms_combine_exactly(tiny1):
    """Σ over samples of the signed per-sample vector terms = the signed group sum Σ_group W·g of the
    summed gradient (over all coupled tensors of the group), which mix() then makes absolute."""
    from types import SimpleNamespace

    from llmsculpt.importance.adapruner import _SignedTaylor, sample_terms
    from llmsculpt.importance.groups import score_groups
    from llmsculpt.measure import LocalEngine, Needs

    ids = torch.randint(4, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    terms = [sample_terms(tiny1, ids[i]) for i in range(2)]
    grads = [LocalEngine().measure(tiny1, ids[i:i + 1], Needs(grad=True)).grad for i in range(2)]
    summed = {k: (grads[0][k] + grads[1][k]).clone() for k in grads[0]}
    want = score_groups(tiny1, SimpleNamespace(grad=summed, grad_sq={}, act_sq={}), _SignedTaylor()).layers[0]
    for part in ("heads", "kv", "mlp"):
        got = getattr(terms[0].vector.layers[0], part) + getattr(terms[1].vector.layers[0], part)
        scale = getattr(want, part).abs().max()
        torch.testing.assert_close(got / scale, getattr(want, part) / scale, rtol=1e-4, atol=1e-5, msg=part)
