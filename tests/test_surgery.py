"""Surgery invariants on tiny random models of every family: exactness vs masking, parameter counts,
config after surgery, plan JSON and composition."""

import copy

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model
from llmsculpt.testing.masking import mask_plan

from _plans import mixed_plan, second_plan
from conftest import FAMILIES

X = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_equals_masked_dense(family):
    model = tiny_model(family, rms_norm_eps=1e-12)
    plan = mixed_plan(architecture(model))
    ref = mask_plan(copy.deepcopy(model), plan)(X).logits
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert torch.allclose(pruned(X).logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_param_count_matches_plan(family):
    model = tiny_model(family)
    arch = architecture(model)
    assert count_params(model) == arch.param_count()
    plan = mixed_plan(arch)
    predicted = plan.resulting(arch)
    apply_plan(model, plan)
    assert count_params(model) == predicted.param_count()
    assert architecture(model) == predicted


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_exact_noop(family):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(X).logits
    plan = Plan.keep_all(architecture(model))
    assert plan.is_noop(architecture(model))
    apply_plan(model, plan)
    assert torch.equal(model(X).logits, ref)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_config_after_surgery_uniform_and_heterogeneous():
    model = tiny_model("tiny-qwen3")
    arch = architecture(model)
    uniform = Plan.keep_all(arch)
    for lp in uniform.layers:
        lp.heads, lp.kv_heads, lp.mlp = [0, 1], [0], list(range(40))
    uniform.hidden = list(range(48))
    apply_plan(model, uniform)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 40)
    assert cfg.hidden_size == 48 and cfg.head_dim == 16 and not hasattr(cfg, "sculpt_layers")
    het = Plan.keep_all(architecture(model))
    het.layers[1].mlp = list(range(10))
    het.layers[3].drop = True
    apply_plan(model, het)
    assert model.config.num_hidden_layers == 3
    assert [e["intermediate_size"] for e in model.config.sculpt_layers] == [40, 10, 40]
    assert len(model.config.layer_types) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]


def test_gqa_pairing_follows_repeat_kv():
    """Query head h uses K/V head h // n_rep: dropping K/V head 1 must take query heads 2 and 3."""
    model = tiny_model("tiny-llama")
    plan = Plan.keep_all(architecture(model))
    plan.layers[0].kv_heads, plan.layers[0].heads = [0], [0, 2]  # head 2 needs K/V head 1
    with pytest.raises(SculptError, match="K/V heads"):
        plan.validate(architecture(model))
    plan.layers[0].heads = [0, 1]
    plan.validate(architecture(model))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: setattr(p.layers[0], "mlp", []), "at least one"),
        (lambda p: (setattr(p.layers[0], "heads", []), setattr(p.layers[0], "kv_heads", [])), "at least one"),
        (lambda p: setattr(p, "hidden", []), "at least one"),
        (lambda p: [setattr(lp, "drop", True) for lp in p.layers], "every decoder layer"),
        (lambda p: setattr(p.layers[0], "mlp", [0, 0, 1]), "unique"),
        (lambda p: setattr(p.layers[0], "mlp", [500]), "in \\[0"),
    ],
)
def test_invalid_plans_are_rejected(mutate, message):
    model = tiny_model("tiny-llama")
    plan = Plan.keep_all(architecture(model))
    mutate(plan)
    with pytest.raises(SculptError, match=message):
        apply_plan(model, plan)


def test_plan_json_round_trip_and_composition(tmp_path):
    model = tiny_model("tiny-llama", rms_norm_eps=1e-12)
    arch = architecture(model)
    first = mixed_plan(arch, hidden=False)
    first.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json").to_dict() == first.to_dict()
    step = copy.deepcopy(model)
    apply_plan(step, first)
    second = second_plan(architecture(step), hidden=60)
    apply_plan(step, second)
    once = apply_plan(copy.deepcopy(model), first.compose(second))
    assert torch.allclose(once(X).logits, step(X).logits, atol=1e-6)


def _update(plan: Plan, arch, layer: int, module: str, param: str, op: str, seed: int):
    """A random update of the right shape for ``plan``'s result (``arch`` is what it applies to)."""
    from llmsculpt.plan import Update

    res = plan.resulting(arch)
    kept = [lp.index for lp in plan.layers if not lp.drop]
    ls = res.layers[kept.index(layer)]
    cols = ls.n_heads * arch.head_dim if module == "o_proj" else ls.mlp
    shape = (res.hidden, cols) if param == "weight" else (res.hidden,)
    value = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return Update(layer=layer, module=module, param=param, op=op, value=value,
                  unit=arch.head_dim if module == "o_proj" else 1)


def test_plan_updates_apply_compose_and_round_trip(tmp_path):
    """Updates are set/added after the selection (biases created where needed), survive save/load
    in the sidecar, and composing two plans with updates equals applying them one after the other."""
    model = tiny_model("tiny-llama", rms_norm_eps=1e-12)
    arch = architecture(model)
    first = mixed_plan(arch, hidden=False)
    first.updates = [_update(first, arch, 0, "o_proj", "weight", "set", 1), _update(first, arch, 1, "down_proj", "bias", "add", 2),
                     _update(first, arch, 3, "down_proj", "weight", "set", 3)]
    step = apply_plan(copy.deepcopy(model), first)
    assert torch.equal(step.model.layers[0].self_attn.o_proj.weight, first.updates[0].value)
    assert torch.equal(step.model.layers[1].mlp.down_proj.bias, first.updates[1].value)
    assert step.model.layers[0].mlp.down_proj.bias is not None and step.config.sculpt_output_bias == {
        "o_proj": False, "down_proj": True}
    first.save(tmp_path / "p.json")
    loaded = Plan.load(tmp_path / "p.json")
    assert loaded.to_dict() == first.to_dict() and torch.equal(loaded.updates[2].value, first.updates[2].value)
    mid = architecture(step)
    second = Plan.keep_all(mid)
    second.layers[0].heads, second.layers[0].kv_heads = [1], [mid.layers[0].kv_map[1]]
    second.layers[1].mlp = list(range(3, 40))
    second.layers[2].drop = True  # the original layer 3, whose down_proj weight the first plan set
    second.hidden = list(range(2, 62))
    second.updates = [_update(second, mid, 1, "o_proj", "bias", "add", 4)]
    apply_plan(step, second)
    composed = first.compose(second)
    assert [u.layer for u in composed.updates] == [0, 1, 1]  # original indices; layer 3's update went with it
    once = apply_plan(copy.deepcopy(model), composed)
    assert torch.allclose(once(X).logits, step(X).logits, atol=1e-6)
    assert not first.without_updates().updates and first.updates
