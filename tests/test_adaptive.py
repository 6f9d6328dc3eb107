"""Adapt-Pruner: layer importance, normalisation, allocation, GQA rounding, A=0 == uniform,
iterative runs reaching the target, plan replay, plots."""

import copy

import pytest
import torch

from llmsculpt.allocation import PruneScope, counts_for_sparsity, solve_uniform_offset
from llmsculpt.allocation.adaptive import accumulate, adaptive_offsets, clip_state, normalise_importance, step_offsets
from llmsculpt.config import PruneConfig
from llmsculpt.importance.layer_importance import layer_change, normalise
from llmsculpt.measure.hooks import layer_io_hooks
from llmsculpt.methods import PruneContext, prune_model
from llmsculpt.structures.shapes import LayerShape, architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model, tiny_tokenizer


def calib(seed):
    return torch.randint(4, 128, (4, 32), generator=torch.Generator().manual_seed(seed))


def run(method, model, **cfg):
    """Prune ``model`` itself (inplace) and return the PruneResult."""
    ctx = PruneContext(model, tiny_tokenizer(), PruneConfig(method=method, **cfg), calib, inplace=True)
    pruned, result = prune_model(ctx)
    assert pruned is model
    return result


def test_identity_layer_is_least_important():
    model = tiny_model("tiny-llama", num_hidden_layers=4)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    with layer_io_hooks(model) as imp, torch.no_grad():
        model(calib(0))
    values = imp.values()
    assert values.argmin().item() == 2 and values[2].item() == pytest.approx(-1.0, abs=1e-5)
    x = torch.randn(5, 8)
    assert torch.allclose(layer_change(x, x, "euclidean"), torch.zeros(5))
    assert torch.allclose(layer_change(x, 2 * x, "cosine"), -torch.ones(5), atol=1e-6)


def test_normalisation():
    imp = torch.tensor([1.0, 2.0, 3.0, 10.0])
    n = normalise(imp, [0, 1, 2])
    assert n.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0])
    assert normalise(torch.ones(4), [0, 1, 2, 3]).tolist() == [0, 0, 0, 0]


def test_allocation_hits_target_and_favours_important_layers():
    arch = architecture(tiny_model("tiny-llama", num_hidden_layers=6))
    scope = PruneScope()
    norm = torch.tensor([-1.0, -0.5, 0.0, 0.2, 0.5, 1.0])
    target = int(0.3 * sum(arch.layer_params(ls) for ls in arch.layers))
    s, budgets = solve_uniform_offset(arch, target, scope, offsets=adaptive_offsets(norm, list(range(6)), 0.2))
    removed = sum(b.removed_params for b in budgets.values())
    per_channel = 3 * arch.hidden
    assert target <= removed <= target + 6 * per_channel  # at most one channel per layer over
    assert budgets[0].removed_params > budgets[5].removed_params


def test_gqa_rounding_prunes_attention_only_when_sparsity_allows():
    arch = architecture(tiny_model("tiny-llama"))
    three = LayerShape(n_heads=9, n_kv=3, mlp=96, kv_map=tuple(h // 3 for h in range(9)))
    scope = PruneScope()
    assert counts_for_sparsity(arch, three, 0.10, scope).attn_units == 0
    assert counts_for_sparsity(arch, three, 0.30, scope).attn_units == 1
    b = counts_for_sparsity(arch, three, 0.30, scope)
    assert b.mlp_channels > 0  # the MLP still takes its share
    layer_total = arch.layer_params(three) - 2 * arch.hidden
    assert abs(b.removed_params - 0.3 * layer_total) < 3 * arch.hidden * 2


@pytest.mark.parametrize("split", ["proportional", "importance"])
def test_amplitude_zero_single_step_is_uniform(split):
    base = tiny_model("tiny-qwen2", num_hidden_layers=6)
    u, a = copy.deepcopy(base), copy.deepcopy(base)
    ru = run("uniform", u, ratio=0.3, split=split)
    ra = run("adaptive", a, ratio=0.3, split=split, options={"amplitude": 0.0, "steps": 1})
    assert ru.plan.to_dict()["layers"] == ra.plan.to_dict()["layers"]
    x = calib(5)
    assert torch.equal(u(x).logits, a(x).logits)


def test_iterative_run_reaches_target_and_replays():
    base = tiny_model("tiny-llama", num_hidden_layers=6)
    model = copy.deepcopy(base)
    target = 120_000
    result = run("adaptive", model, target_params=target, options={"amplitude": 0.1, "steps": 4})
    params = count_params(model)
    step_size = (count_params(base) - target) / 4
    assert target - step_size / 4 <= params <= target
    assert len(result.history["steps"]) == 4
    assert all(len(st["importance"]) == 6 for st in result.history["steps"])
    replay = apply_plan(copy.deepcopy(base), result.plan)
    x = calib(9)
    assert torch.allclose(replay(x).logits, model(x).logits, atol=1e-6)


def test_same_seed_same_plan_and_plots(tmp_path):
    plans = []
    for _ in range(2):
        model = tiny_model("tiny-mistral")
        plans.append(run("adaptive", model, ratio=0.25, seed=4, options={"steps": 2}).plan.to_dict())
    assert plans[0] == plans[1]
    pytest.importorskip("matplotlib")
    from llmsculpt import prune

    out = prune("tiny-llama", ratio=0.3, method="adaptive", calib_text="pruning text " * 300,
                n_samples=4, seq_len=32, options={"steps": 2})
    out.save(tmp_path / "m", plots=True)
    assert (tmp_path / "m" / "layer_params.png").stat().st_size > 1000
    assert (tmp_path / "m" / "layer_importance.png").stat().st_size > 1000


def test_bad_options_are_rejected():
    from llmsculpt.errors import SculptError

    with pytest.raises(SculptError, match="unknown adaptive options"):
        run("adaptive", tiny_model(), ratio=0.2, options={"stepz": 3})
    with pytest.raises(SculptError, match="distance"):
        run("adaptive", tiny_model(), ratio=0.2, options={"distance": "chebyshev"})


def test_small_iterative_steps_still_prune_attention():
    """Per-step sparsity of ~7 % would round to zero K/V groups out of 3; cumulative sparsity must not."""
    base = tiny_model("tiny-mistral", num_attention_heads=6, num_key_value_heads=3, head_dim=16)
    one_shot, iterative = copy.deepcopy(base), copy.deepcopy(base)
    run("uniform", one_shot, ratio=0.35)
    run("adaptive", iterative, ratio=0.35, split="proportional", options={"amplitude": 0.0, "steps": 5})
    kv_one = [ls.n_kv for ls in architecture(one_shot).layers]
    kv_iter = [ls.n_kv for ls in architecture(iterative).layers]
    assert kv_one == [2, 2, 2, 2]
    assert kv_iter == kv_one


def test_importance_split_ranks_units_and_channels_together():
    """With a useless K/V group and important MLP channels, the joint split removes the group."""
    from llmsculpt.importance.groups import LayerScores

    arch = architecture(tiny_model("tiny-llama"))
    ls = arch.layers[0]
    scores = LayerScores(heads=torch.ones(4), kv=torch.tensor([0.0, 1e6]), mlp=torch.full((96,), 1e3))
    joint = counts_for_sparsity(arch, ls, 0.3, PruneScope(split="importance"), scores=scores)
    assert joint.attn_units == 1
    scores.kv = torch.tensor([1e9, 1e9])
    joint = counts_for_sparsity(arch, ls, 0.3, PruneScope(split="importance"), scores=scores)
    assert joint.attn_units == 0 and joint.mlp_channels > 0
    layer_total = arch.layer_params(ls) - 2 * arch.hidden
    assert abs(joint.removed_params - 0.3 * layer_total) <= 3 * arch.hidden
    base = tiny_model("tiny-llama", num_hidden_layers=4)
    model = copy.deepcopy(base)
    run("uniform", model, ratio=0.3, split="importance")
    assert abs(1 - count_params(model) / count_params(base) - 0.3) < 0.01


def test_robust_normalisations_resist_one_outlier_layer():
    """Layer 0 far from the rest (as on smollm2): ``max`` flattens the others, rank/mad/inner don't."""
    imp = torch.tensor([0.0, -0.98, -0.97, -0.96, -0.95, -0.75])
    ids = list(range(6))
    flat = normalise_importance(imp, ids, "max")
    assert flat[0] == pytest.approx(1.0) and (flat[1:5].max() - flat[1:5].min()) < 0.05
    rank = normalise_importance(imp, ids, "rank")
    assert rank.tolist() == pytest.approx([1.0, -1.0, -0.6, -0.2, 0.2, 0.6])
    mad = normalise_importance(imp, ids, "mad")
    assert mad[1] < mad[2] < mad[3] < mad[4] and mad[0] == 1.0 and mad[1] >= -1.0
    inner = normalise_importance(imp, ids, "inner")
    assert inner[0] == 1.0 and inner[5] == 1.0 and inner[1] == pytest.approx(-1.0, abs=0.05)
    assert normalise_importance(torch.ones(4), [0, 1, 2, 3], "rank").tolist() == [0, 0, 0, 0]
    tied = normalise_importance(torch.tensor([1.0, 1.0, 2.0]), [0, 1, 2], "rank")
    assert tied.tolist() == pytest.approx([-0.5, -0.5, 1.0])


def test_offsets_accumulate_relative_to_the_step_and_clip():
    norm = torch.tensor([-1.0, 0.0, 1.0])
    now = step_offsets(norm, [0, 1, 2], amplitude=0.5, increment=0.1)
    assert now == pytest.approx({0: -0.05, 1: 0.0, 2: 0.05})
    two = accumulate(accumulate({}, now), now)
    assert two == pytest.approx({0: -0.1, 1: 0.0, 2: 0.1})
    # S = 0.05: layer 2's sparsity 0.05 − 0.1 < 0 is held at 0, so it carries no debt forward
    clipped = clip_state(two, 0.05)
    assert clipped == pytest.approx({0: -0.1, 1: 0.0, 2: 0.05})
    assert clip_state({0: -2.0}, 0.5) == pytest.approx({0: 0.5 - 0.99})


def test_cumulative_offsets_spread_layers_further_at_the_same_target():
    base = tiny_model("tiny-llama", num_hidden_layers=6)
    spread = {}
    for cumulative in (False, True):
        model = copy.deepcopy(base)
        res = run("adaptive", model, ratio=0.3, split="proportional",
                  options={"amplitude": 1.0, "steps": 4, "cumulative": cumulative, "normalise": "rank"})
        last = res.history["steps"][-1]["layer_sparsity"]
        spread[cumulative] = max(last.values()) - min(last.values())
        assert abs(1 - count_params(model) / count_params(base) - 0.3) < 0.02
        assert len(res.history["steps"]) == 4 and all("layer_sparsity" in st for st in res.history["steps"])
    assert spread[True] > spread[False]


@pytest.mark.parametrize("normalise", ["rank", "max", "mad", "inner"])
def test_amplitude_zero_is_iterative_uniform(normalise):
    """A = 0: no offsets whatever the normalisation or accumulation, so every layer has the same
    cumulative sparsity each step (the same plan as the old non-cumulative A = 0)."""
    base = tiny_model("tiny-qwen2", num_hidden_layers=4)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ra = run("adaptive", a, ratio=0.3, options={"amplitude": 0.0, "steps": 3, "normalise": normalise})
    rb = run("adaptive", b, ratio=0.3, options={"amplitude": 0.0, "steps": 3, "cumulative": False})
    assert ra.plan.to_dict()["layers"] == rb.plan.to_dict()["layers"]
    for st in ra.history["steps"]:
        assert len(set(round(v, 9) for v in st["sparsity"].values())) == 1


def test_same_seed_same_plan_with_every_normalisation():
    for normalise in ("rank", "mad"):
        plans = [run("adaptive", tiny_model("tiny-llama", num_hidden_layers=4), ratio=0.3, seed=3,
                     options={"steps": 3, "normalise": normalise}).plan.to_dict() for _ in range(2)]
        assert plans[0] == plans[1]
    with pytest.raises(Exception, match="normalise"):
        run("adaptive", tiny_model(), ratio=0.2, options={"normalise": "zscore"})
