"""OBS compensation when input columns of a linear layer are removed (EfficientLLM's update).

On a random layer W [out, in] with inputs X [in, tokens] and H = X Xᵀ: the update zeroes the
removed columns and, among all weights with those columns zero, minimises ‖W X − W' X‖ (at no
damping it is the least-squares solution), so it beats plain zeroing; for one column the block
formula reduces to δw = −(w_p / [H⁻¹]_pp) H⁻¹[:, p].
"""

from __future__ import annotations

import pytest
import torch

from llmsculpt.importance.obs import damped, obs_remove_columns

COLS = [1, 4, 5, 9]


@pytest.fixture
def layer():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 12, generator=gen, dtype=torch.float64)
    mix = torch.randn(12, 12, generator=gen, dtype=torch.float64)  # correlated inputs: OBS has work to do
    x = mix @ torch.randn(12, 400, generator=gen, dtype=torch.float64)
    return w, x, x @ x.T


def _err(w, w2, x) -> float:
    return float(torch.linalg.norm(w @ x - w2 @ x))


def test_removed_columns_are_zero_and_the_rest_are_updated(layer):
    w, x, h = layer
    out = obs_remove_columns(w, h, COLS)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert torch.count_nonzero(out[:, COLS]) == 0
    kept = [c for c in range(12) if c not in COLS]
    assert not torch.allclose(out[:, kept], w[:, kept])
    assert torch.equal(w, layer[0])  # the input weight is not modified


def test_obs_beats_plain_zeroing(layer):
    w, x, h = layer
    zeroed = w.clone()
    zeroed[:, COLS] = 0
    obs = obs_remove_columns(w, h, COLS)
    assert _err(w, obs, x) < 0.8 * _err(w, zeroed, x)


def test_without_damping_it_is_the_least_squares_solution(layer):
    w, x, h = layer
    kept = [c for c in range(12) if c not in COLS]
    # min over W'_kept of ‖W X − W'_kept X_kept‖: solve X_keptᵀ W'_keptᵀ = Xᵀ Wᵀ
    best = torch.linalg.lstsq(x[kept].T, (w @ x).T).solution.T
    want = torch.zeros_like(w)
    want[:, kept] = best
    torch.testing.assert_close(obs_remove_columns(w, h, COLS, damp=0.0), want, rtol=1e-7, atol=1e-9)


def test_no_perturbation_of_the_optimum_lowers_the_error(layer):
    w, x, h = layer
    obs = obs_remove_columns(w, h, COLS, damp=0.0)
    kept = [c for c in range(12) if c not in COLS]
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        nudge = torch.zeros_like(w)
        nudge[:, kept] = 1e-3 * torch.randn(8, len(kept), generator=gen, dtype=w.dtype)
        assert _err(w, obs + nudge, x) >= _err(w, obs, x)


def test_single_column_formula_equals_the_block_formula(layer):
    w, _, h = layer
    p = 4
    hd = damped(h, 0.01)
    hinv = torch.linalg.inv(hd)
    single = w - torch.outer(w[:, p] / hinv[p, p], hinv[:, p])
    single[:, p] = 0
    torch.testing.assert_close(obs_remove_columns(w, h, [p], damp=0.01), single, rtol=1e-9, atol=1e-10)


def test_float32_weights_stay_float32_and_no_columns_is_a_copy(layer):
    w, _, h = layer
    w32 = w.float()
    out = obs_remove_columns(w32, h.float(), COLS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, obs_remove_columns(w, h, COLS).float(), rtol=1e-4, atol=1e-5)
    same = obs_remove_columns(w32, h.float(), [])
    assert torch.equal(same, w32) and same.data_ptr() != w32.data_ptr()


def test_damped_adds_a_fraction_of_the_mean_diagonal():
    h = torch.tensor([[2.0, 1.0], [1.0, 4.0]])
    torch.testing.assert_close(damped(h, 0.1), h + 0.3 * torch.eye(2))
    # a dead input (all-zero H) still gets a well-posed solve
    assert torch.linalg.matrix_rank(damped(torch.zeros(3, 3), 0.01)) == 3


def test_obs_updates_become_plan_updates_that_surgery_applies(tiny1):
    """Removing query head 1 of the one-layer tiny model: the plan's update sets o_proj to the
    OBS-compensated columns of the heads that stay, and beats plain removal on the o_proj output."""
    from llmsculpt.importance.obs import obs_updates
    from llmsculpt.plan import Plan
    from llmsculpt.structures.shapes import architecture
    from llmsculpt.surgery.apply import apply_plan

    arch = architecture(tiny1)
    o = tiny1.model.layers[0].self_attn.o_proj
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 64, generator=gen) @ torch.randn(64, 300, generator=gen)  # o_proj inputs, correlated
    h = (x @ x.T).double()
    original = o.weight.detach().clone()
    updates = obs_updates(tiny1, arch, "attention", [(0, 1)], {(0, "o"): h})
    assert [(u.layer, u.module, u.param, u.op, u.unit) for u in updates] == [(0, "o_proj", "weight", "set", 16)]
    plan = Plan.keep_all(arch)
    plan.layers[0].heads = [0, 2, 3]
    plan.updates = updates
    pruned = apply_plan(tiny1, plan).model.layers[0].self_attn.o_proj  # surgery builds a new Linear
    gone = list(range(16, 32))
    kept = [c for c in range(64) if c not in gone]
    want = obs_remove_columns(original, h, gone)[:, kept]
    torch.testing.assert_close(pruned.weight.detach(), want)
    with torch.no_grad():
        dense = original @ x
        err_obs = torch.linalg.norm(dense - pruned.weight @ x[kept])
        err_plain = torch.linalg.norm(dense - original[:, kept] @ x[kept])
    assert err_obs < err_plain
