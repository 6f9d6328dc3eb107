"""Plans as data: composition equals application in sequence, JSON round trip, validation."""

from __future__ import annotations

import json

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.plan import LayerPlan, Plan
from llmsculpt.structures.shapes import architecture


def _first(arch) -> Plan:
    """Layer 0 loses K/V group 0 (heads 0, 1) and MLP channels 0..9; layer 2 loses head 3."""
    p = Plan.keep_all(arch)
    p.layers[0].heads, p.layers[0].kv_heads, p.layers[0].mlp = [2, 3], [1], list(range(10, 96))
    p.layers[2].heads = [0, 1, 2]
    p.layers[3].mlp = list(range(0, 96, 2))
    return p


def _second(arch_after) -> Plan:
    """Made on the first plan's result: indices are relative to that smaller model."""
    p = Plan.keep_all(arch_after)
    p.layers[0].mlp = list(range(40, 86))  # of the 86 kept
    p.layers[1].heads, p.layers[1].kv_heads = [0, 1], [0]
    p.layers[2].heads = [0, 2]  # of the 3 kept (0, 1, 2): keeps original 0 and 2
    p.layers[3].drop = True
    return p


def test_compose_gives_the_architecture_of_applying_both(arch):
    first = _first(arch)
    mid = first.resulting(arch)
    second = _second(mid)
    composed = first.compose(second)
    composed.validate(arch)
    assert composed.resulting(arch) == second.resulting(mid)


def test_compose_maps_later_indices_back_to_the_original(arch):
    first = _first(arch)
    composed = first.compose(_second(first.resulting(arch)))
    assert composed.layers[0].mlp == list(range(50, 96))
    assert composed.layers[0].heads == [2, 3] and composed.layers[0].kv_heads == [1]
    assert composed.layers[1].heads == [0, 1] and composed.layers[1].kv_heads == [0]
    assert composed.layers[2].heads == [0, 2]
    assert composed.layers[3].drop


def test_compose_skips_layers_the_first_plan_dropped(arch):
    first = Plan.keep_all(arch)
    first.layers[1].drop = True
    second = Plan.keep_all(first.resulting(arch))  # 3 layers: originals 0, 2, 3
    second.layers[1].mlp = [0, 1, 2]
    composed = first.compose(second)
    assert composed.layers[1].drop and composed.layers[2].mlp == [0, 1, 2] and composed.layers[3].mlp is None
    assert composed.resulting(arch) == second.resulting(first.resulting(arch))
    with pytest.raises(SculptError, match="different layer count"):
        first.compose(Plan.keep_all(arch))


def test_compose_of_hidden_channels_and_meta(arch):
    a = Plan.keep_all(arch)
    a.hidden, a.meta = list(range(8, 64)), {"method": "a", "step": 1}
    b = Plan.keep_all(a.resulting(arch))
    b.hidden, b.meta = list(range(0, 56, 2)), {"step": 2}
    c = a.compose(b)
    assert c.hidden == list(range(8, 64, 2)) and c.meta == {"method": "a", "step": 2}
    assert c.resulting(arch) == b.resulting(a.resulting(arch))


def test_compose_with_keep_all_is_identity(arch):
    p = _first(arch)
    assert p.compose(Plan.keep_all(p.resulting(arch))).resulting(arch) == p.resulting(arch)
    assert Plan.keep_all(arch).compose(p).to_dict()["layers"] == p.to_dict()["layers"]


def test_composed_plan_applied_once_equals_two_plans_applied_in_sequence(tiny1):
    from llmsculpt.surgery.apply import apply_plan
    from llmsculpt.testing.tiny import tiny_model

    arch = architecture(tiny1)
    first = Plan.keep_all(arch)
    first.layers[0].heads, first.layers[0].kv_heads, first.layers[0].mlp = [2, 3], [1], list(range(0, 96, 3))
    first.hidden = list(range(4, 64))
    second = Plan.keep_all(first.resulting(arch))
    second.layers[0].heads, second.layers[0].mlp = [1], list(range(5, 32))
    second.hidden = list(range(0, 60, 2))
    twice = apply_plan(apply_plan(tiny1, first), second)
    once = apply_plan(tiny_model("tiny-llama", num_hidden_layers=1), first.compose(second))
    assert architecture(once) == architecture(twice)
    a, b = dict(once.named_parameters()), dict(twice.named_parameters())
    assert a.keys() == b.keys()
    for name in a:  # norms are rescaled once by √(30/64) vs twice by √(60/64)·√(30/60): rounding only
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=name)


def test_json_round_trip(arch, tmp_path):
    p = _first(arch)
    p.hidden, p.meta = list(range(0, 64, 2)), {"method": "uniform", "ratio": 0.2}
    text = json.dumps(p.to_dict())
    back = Plan.from_dict(json.loads(text))
    assert back.to_dict() == p.to_dict()
    assert back.resulting(arch) == p.resulting(arch)
    p.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").to_dict() == p.to_dict()


def test_bad_plan_files_are_user_errors(tmp_path):
    with pytest.raises(SculptError, match="not a valid llmsculpt plan"):
        Plan.from_dict({"hidden": None})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SculptError, match="cannot read plan"):
        Plan.load(tmp_path / "bad.json")
    with pytest.raises(SculptError, match="cannot read plan"):
        Plan.load(tmp_path / "missing.json")


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.layers.pop(), "plan has 3 layers, model has 4"),
    (lambda p: [setattr(lp, "drop", True) for lp in p.layers], "removes every decoder layer"),
    (lambda p: setattr(p.layers[1], "mlp", []), "layer 1 MLP channels: would remove all 96"),
    (lambda p: setattr(p.layers[1], "mlp", [0, 0, 1]), "indices must be unique"),
    (lambda p: setattr(p.layers[1], "mlp", [95, 96]), r"in \[0, 96\)"),
    (lambda p: setattr(p, "hidden", [64]), "hidden channels"),
    (lambda p: (setattr(p.layers[2], "heads", [0, 1]), setattr(p.layers[2], "kv_heads", [0, 1])),
     "layer 2: kept K/V heads"),
    (lambda p: setattr(p.layers[2], "heads", []), "layer 2 heads"),
])
def test_validate_names_what_is_wrong(arch, edit, message):
    p = Plan.keep_all(arch)
    edit(p)
    with pytest.raises(SculptError, match=message):
        p.validate(arch)


def test_is_noop(arch):
    assert Plan.keep_all(arch).is_noop(arch)
    p = Plan.keep_all(arch)
    p.layers[0].mlp = list(range(96))  # explicit keep-everything is still a no-op
    assert p.is_noop(arch)
    p.layers[1].drop = True
    assert not p.is_noop(arch)
    assert not _first(arch).is_noop(arch)
    assert LayerPlan(index=0) == Plan.keep_all(arch).layers[0]
