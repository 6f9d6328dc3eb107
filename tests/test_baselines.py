"""Baselines in the shared framework: FLAP (fluctuation + bias compensation), ShortGPT layer
removal, magnitude and Wanda-sp; each hits its target and saves/reloads exactly."""

import copy

import pytest
import torch

import llmsculpt

from llmsculpt.config import PruneConfig
from llmsculpt.io.save import save_pruned
from llmsculpt.methods import PruneContext, check_options, get_method, method_names, prune_model
from llmsculpt.models.loading import load
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.testing import tiny_model, tiny_tokenizer


def calib(seed):
    return torch.randint(4, 128, (4, 32), generator=torch.Generator().manual_seed(seed))


def run(method, model, **cfg):
    """Prune ``model`` itself (inplace) and return the PruneResult."""
    ctx = PruneContext(model, tiny_tokenizer(), PruneConfig(method=method, **cfg), calib, inplace=True)
    pruned, result = prune_model(ctx)
    assert pruned is model
    return result


def _outputs(model, module_name, x):
    seen = []
    handle = dict(model.named_modules())[module_name].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


@pytest.mark.parametrize(
    "part, module, unit",
    [
        ("attention", "model.layers.1.self_attn.o_proj", "kv"),
        ("attention", "model.layers.1.self_attn.o_proj", "head"),
        ("mlp", "model.layers.1.mlp.down_proj", "kv"),
    ],
)
def test_flap_bias_compensation_keeps_mean_output(part, module, unit):
    """Pruning one part of one layer leaves that part's inputs unchanged, so the compensated
    output mean over the calibration tokens must equal the dense one."""
    dense = tiny_model("tiny-llama")
    pruned = copy.deepcopy(dense)
    only = {"attention": {"mlp": False}, "mlp": {"attention": False}}[part]
    run("flap", pruned, ratio=0.1, layers="1", attn_unit=unit, **only)
    shape = architecture(pruned).layers[1]
    assert (shape.n_heads < 4) if part == "attention" else (shape.mlp < 96)
    x = calib(0)  # the calibration batch: compensation is exact in expectation over it
    want, got = _outputs(dense, module, x).mean(0), _outputs(pruned, module, x).mean(0)
    assert torch.allclose(want, got, atol=1e-5)
    with torch.no_grad():
        dict(pruned.named_modules())[module].bias.zero_()
    assert (want - _outputs(pruned, module, x).mean(0)).abs().max() > 1e-4  # compensation mattered


def test_shortgpt_removes_the_identity_layer_first():
    model = tiny_model("tiny-qwen2", num_hidden_layers=6)
    with torch.no_grad():
        model.model.layers[3].self_attn.o_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
    result = run("shortgpt", model, ratio=0.1)
    assert result.history["removed_layers"] == [3]
    assert result.history["block_influence"][3] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("method", ["uniform", "magnitude", "wanda-sp", "flap", "shortgpt", "adaptive"])
def test_methods_hit_target_and_round_trip(tmp_path, method):
    base = tiny_model("tiny-llama", num_hidden_layers=6)
    model = copy.deepcopy(base)
    result = run(method, model, ratio=0.3, options={"steps": 2} if method == "adaptive" else {})
    removed = 1 - count_params(model) / count_params(base)
    assert 0.3 <= removed < (0.47 if method == "shortgpt" else 0.36)
    assert count_params(model) == architecture(model).param_count()
    save_pruned(model, tiny_tokenizer(), tmp_path / method, plan=result.plan)
    x = calib(11)
    assert torch.equal(load(tmp_path / method, device="cpu").model(x).logits, model(x).logits)


@pytest.mark.parametrize("family", ["tiny-qwen2", "tiny-qwen3", "tiny-llama-tied"])
def test_flap_output_biases_round_trip_in_every_family(tmp_path, family):
    model = tiny_model(family)
    result = run("flap", model, ratio=0.2)
    save_pruned(model, tiny_tokenizer(), tmp_path / "m", plan=result.plan)
    x = calib(5)
    assert torch.equal(load(tmp_path / "m", device="cpu").model(x).logits, model(x).logits)


SAMPLE_AWARE = {"samples": [0, 2], "pool_size": 3, "pool_seed": 0, "alpha1": 0.4, "alpha2": 0.7, "lambda1": 1.5,
                "lambda2": 0.01, "calib_text": "Calibration words for the sample pool of the planner test. " * 40}
OPTIONS = {"adaptive": {"steps": 2}, "sample_aware": SAMPLE_AWARE}


@pytest.mark.parametrize("method", method_names())
def test_a_planner_never_modifies_the_callers_model(method):
    """plan() and prune_model() without inplace leave the caller's weights and shapes as they were."""
    model = tiny_model("tiny-llama", num_hidden_layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    ctx = PruneContext(model, tiny_tokenizer(), PruneConfig(method=method, ratio=0.2, options=OPTIONS.get(method, {})),
                       calib)
    result = get_method(method).plan(ctx)
    pruned, again = prune_model(ctx)
    assert result.plan.to_dict() == again.plan.to_dict()
    assert pruned is not model and count_params(pruned) < count_params(model)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.to_dict() == config
    assert not any(p.grad is not None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_flap_plan_replays_from_its_files_on_a_fresh_dense_model(tmp_path):
    """FLAP's bias compensation lives in the plan: plan.json + its sidecar, applied to a fresh dense
    model, give exactly the pruned model's logits (and its output-bias config)."""
    from llmsculpt.plan import Plan
    from llmsculpt.surgery import apply_plan

    dense = tiny_model("tiny-llama")
    pruned, result = prune_model(PruneContext(dense, tiny_tokenizer(), PruneConfig(method="flap", ratio=0.3), calib))
    assert {u.module for u in result.plan.updates} == {"o_proj", "down_proj"}
    result.plan.save(tmp_path / "plan.json")
    assert (tmp_path / "plan.updates.safetensors").is_file()
    json_only = Plan.from_dict(result.plan.to_dict())
    assert all(u.value is None for u in json_only.updates)
    replay = apply_plan(tiny_model("tiny-llama"), Plan.load(tmp_path / "plan.json"))
    x = calib(3)
    assert torch.equal(replay(x).logits, pruned(x).logits)
    assert replay.config.sculpt_output_bias == {"o_proj": True, "down_proj": True}
    (tmp_path / "plan.updates.safetensors").unlink()
    from llmsculpt.errors import SculptError

    with pytest.raises(SculptError, match="updates.safetensors"):
        Plan.load(tmp_path / "plan.json")


def test_saved_flap_output_reloads_its_plan_identically(tmp_path):
    """save_pruned writes plan.json with its sidecar; the reloaded plan replays the saved model."""
    from llmsculpt.plan import Plan
    from llmsculpt.surgery import apply_plan

    model = tiny_model("tiny-qwen2")
    pruned, result = prune_model(PruneContext(model, tiny_tokenizer(), PruneConfig(method="flap", ratio=0.25), calib))
    save_pruned(pruned, tiny_tokenizer(), tmp_path / "m", plan=result.plan)
    x = calib(4)
    replay = apply_plan(tiny_model("tiny-qwen2"), Plan.load(tmp_path / "m" / "plan.json"))
    assert torch.equal(replay(x).logits, load(tmp_path / "m", device="cpu").model(x).logits)


@pytest.mark.parametrize("method, key", [("flap", "steps"), ("uniform", "amplitude"), ("adaptive", "stepz"),
                                         ("sample_aware", "alpha3")])
def test_check_options_rejects_an_unknown_key_by_name(method, key):
    from llmsculpt.errors import SculptError

    with pytest.raises(SculptError, match=f"unknown {method} options: {key}; known: ") as err:
        check_options(method, {key: 1})
    if method == "adaptive":
        assert "amplitude, steps, normalise, cumulative, distance, resample" in str(err.value)
    assert check_options("adaptive", {"steps": "3"}).steps == 3
    assert check_options("flap", {}) is not None


def test_sample_aware_draws_its_pool_from_the_callers_calibration_text(monkeypatch):
    """``prune(calib_text=...)`` reaches the sample pool (a recipe's own ``calib_text`` option wins);
    without it the pool was silently tokenised from the default calibration source."""
    import llmsculpt.methods.sample_aware as sa

    seen = []
    real = sa.pool_for
    monkeypatch.setattr(sa, "pool_for", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    text = "pruning keeps the heads that matter and drops the rest. " * 300
    options = {k: v for k, v in SAMPLE_AWARE.items() if k != "calib_text"}
    by_caller = llmsculpt.prune("tiny-llama", method="sample_aware", ratio=0.2, calib_text=text, options=options,
                                n_samples=4, seq_len=16)
    by_recipe = llmsculpt.prune("tiny-llama", method="sample_aware", ratio=0.2, calib_text="other words " * 400,
                                options={**options, "calib_text": text}, n_samples=4, seq_len=16)
    assert seen == [text, text]
    assert by_caller.plan.to_dict() == by_recipe.plan.to_dict()
