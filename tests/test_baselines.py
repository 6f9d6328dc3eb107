"""Baselines in the shared framework: FLAP (fluctuation + bias compensation), ShortGPT layer
removal, magnitude and Wanda-sp; each hits its target and saves/reloads exactly."""

import copy

import pytest
import torch

from llmsculpt.config import PruneConfig
from llmsculpt.io.save import save_pruned
from llmsculpt.methods import PruneContext, get_method
from llmsculpt.models.loading import load
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.testing import tiny_model, tiny_tokenizer


def calib(seed):
    return torch.randint(4, 128, (4, 32), generator=torch.Generator().manual_seed(seed))


def run(method, model, **cfg):
    return get_method(method)(PruneContext(model, tiny_tokenizer(), PruneConfig(**cfg), calib, progress=False))


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
