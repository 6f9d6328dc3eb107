"""Weight updates inside a plan (FLAP bias compensation, OBS): composition replays them exactly,
and they survive save/load through the safetensors sidecar."""

from __future__ import annotations

import json

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.plan import Plan, Update
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery.apply import apply_plan
from llmsculpt.testing.tiny import tiny_model


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tiny3():
    return tiny_model("tiny-llama", num_hidden_layers=3)


def _plans(arch):
    """Two pruning steps with updates of every kind; the second is made on the first's result."""
    first = Plan.keep_all(arch)
    first.hidden = list(range(4, 64))  # 60 kept
    first.layers[0].mlp = list(range(0, 96, 2))  # 48 kept
    first.layers[1].drop = True
    first.layers[2].heads = [0, 1, 3]
    first.updates = [
        Update(layer=0, module="down_proj", param="weight", op="set", value=_randn(60, 48, seed=1)),
        Update(layer=2, module="o_proj", param="weight", op="add", value=_randn(60, 48, seed=2), unit=16),
        Update(layer=2, module="o_proj", param="bias", op="add", value=_randn(60, seed=3)),
    ]
    mid = first.resulting(arch)  # 2 layers: the original 0 and 2
    second = Plan.keep_all(mid)
    second.hidden = list(range(0, 60, 2))  # 30 kept
    second.layers[0].mlp = list(range(10, 48))  # 38 kept
    second.layers[1].heads = [0, 2]  # of the kept 0, 1, 3: the original heads 0 and 3
    second.updates = [
        Update(layer=0, module="down_proj", param="bias", op="add", value=_randn(30, seed=4)),
        Update(layer=1, module="o_proj", param="weight", op="set", value=_randn(30, 32, seed=5), unit=16),
    ]
    return first, second


def test_composed_updates_replay_two_steps_exactly():
    model = _tiny3()
    first, second = _plans(architecture(model))
    twice = apply_plan(apply_plan(model, first), second)
    composed = first.compose(second)
    assert {u.layer for u in composed.updates} == {0, 2}  # later updates moved to original indices
    once = apply_plan(_tiny3(), composed)
    assert architecture(once) == architecture(twice)
    a, b = dict(once.named_parameters()), dict(twice.named_parameters())
    assert a.keys() == b.keys()
    for name in a:  # norms: one √ rescale vs two (rounding only); everything else exact
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-6, msg=name)


def test_updates_of_a_dropped_layer_disappear_in_composition(arch):
    first = Plan.keep_all(arch)
    first.updates = [Update(layer=3, module="o_proj", param="bias", op="add", value=torch.ones(64))]
    second = Plan.keep_all(first.resulting(arch))
    second.layers[3].drop = True
    assert first.compose(second).updates == []


def test_updates_change_the_weights_they_name():
    model = _tiny3()
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    value = _randn(64, 96, seed=7)
    plan = Plan.keep_all(architecture(model))
    plan.updates = [Update(layer=0, module="down_proj", param="weight", op="add", value=value)]
    assert not plan.is_noop(architecture(model))
    apply_plan(model, plan)
    torch.testing.assert_close(model.model.layers[0].mlp.down_proj.weight, before + value)


def test_a_wrongly_shaped_update_is_refused():
    model = _tiny3()
    plan = Plan.keep_all(architecture(model))
    plan.layers[0].mlp = list(range(50))
    plan.updates = [Update(layer=0, module="down_proj", param="weight", op="set", value=torch.zeros(64, 96))]
    with pytest.raises(SculptError, match="shape"):
        apply_plan(model, plan)


def test_update_rejects_unknown_targets():
    with pytest.raises(SculptError, match="unsupported update"):
        Update(layer=0, module="q_proj", param="weight", op="set")
    with pytest.raises(SculptError, match="unsupported update"):
        Update(layer=0, module="o_proj", param="weight", op="multiply")


def test_save_load_keeps_update_tensors_in_a_sidecar(tmp_path):
    first, _ = _plans(architecture(_tiny3()))
    path = tmp_path / "plan.json"
    first.save(path)
    assert (tmp_path / "plan.updates.safetensors").is_file()
    back = Plan.load(path)
    assert back.to_dict() == first.to_dict()
    for u, v in zip(back.updates, first.updates):
        assert (u.layer, u.module, u.param, u.op, u.unit) == (v.layer, v.module, v.param, v.op, v.unit)
        assert torch.equal(u.value, v.value)


def test_to_dict_is_json_safe_and_describes_updates_without_values():
    first, _ = _plans(architecture(_tiny3()))
    data = json.loads(json.dumps(first.to_dict()))
    assert [u["shape"] for u in data["updates"]] == [[60, 48], [60, 48], [60]]
    described = Plan.from_dict(data)
    assert all(u.value is None for u in described.updates)
    with pytest.raises(SculptError, match="no value"):
        apply_plan(_tiny3(), described)
    assert first.without_updates().updates == [] and first.updates  # the original keeps its own


def test_loading_without_the_sidecar_is_a_user_error(tmp_path):
    first, _ = _plans(architecture(_tiny3()))
    first.save(tmp_path / "plan.json")
    (tmp_path / "plan.updates.safetensors").unlink()
    with pytest.raises(SculptError, match="missing"):
        Plan.load(tmp_path / "plan.json")
