"""save -> load gives identical logits and generations, for uniform and heterogeneous models,
through llmsculpt.load and through plain transformers (vanilla config or trust_remote_code)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmsculpt.errors import SculptError
from llmsculpt.io.save import save_pruned
from llmsculpt.models.loading import load
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model, tiny_tokenizer

from _plans import save_load_plan
from conftest import FAMILIES

X = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def _pruned(family, heterogeneous):
    model = tiny_model(family)
    plan = save_load_plan(architecture(model), heterogeneous)
    apply_plan(model, plan)
    return model, plan


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("heterogeneous", [False, True])
def test_save_load_round_trip(tmp_path, family, heterogeneous):
    model, plan = _pruned(family, heterogeneous)
    out = tmp_path / "out"
    save_pruned(model, tiny_tokenizer(), out, plan=plan, report={"method": "test"})
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"] == model.config.model_type) != heterogeneous
    assert (out / "sculpt_modeling.py").exists() == heterogeneous
    assert Plan.load(out / "plan.json").to_dict() == plan.to_dict()
    reloaded = load(out, device="cpu").model
    assert torch.equal(reloaded(X).logits, model(X).logits)
    kwargs = {"trust_remote_code": True} if heterogeneous else {}
    plain = AutoModelForCausalLM.from_pretrained(out, **kwargs)
    assert torch.equal(plain(X).logits, model(X).logits)
    want = model.generate(X[:, :4], max_new_tokens=6, do_sample=False)
    assert torch.equal(plain.generate(X[:, :4], max_new_tokens=6, do_sample=False), want)
    report = json.loads((out / "sculpt_report.json").read_text())
    assert report["architecture"]["layers"][-1]["mlp"] == 50


def test_existing_output_needs_overwrite(tmp_path):
    model, plan = _pruned("tiny-llama", False)
    out = tmp_path / "out"
    save_pruned(model, tiny_tokenizer(), out, plan=plan)
    with pytest.raises(SculptError, match="--overwrite"):
        save_pruned(model, tiny_tokenizer(), out, plan=plan)
    save_pruned(model, tiny_tokenizer(), out, plan=plan, overwrite=True)
    assert (out / "model.safetensors").exists()


def test_failed_save_leaves_nothing_behind(tmp_path):
    model, plan = _pruned("tiny-llama", True)

    class Broken:
        def save_pretrained(self, directory):
            raise RuntimeError("disk full")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(model, Broken(), out, plan=plan)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_missing_models_give_clear_errors(tmp_path):
    with pytest.raises(SculptError, match="not found|no such"):
        load(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(SculptError, match="no config.json"):
        load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(SculptError):
        load(bad)
    model, plan = _pruned("tiny-llama", False)
    good = tmp_path / "good"
    save_pruned(model, tiny_tokenizer(), good, plan=plan)
    (good / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SculptError, match="corrupt|could not load"):
        load(good)
    with pytest.raises(SculptError, match="unknown model"):
        load("definitely-not-a-model")
    with pytest.raises(SculptError, match="GGUF file"):
        load(tmp_path / "missing.gguf")


def test_unsupported_architecture_names_supported_ones():
    from transformers import GPT2Config

    from llmsculpt.models.spec import spec_for

    with pytest.raises(SculptError, match="llama, mistral, qwen2, qwen3"):
        spec_for(GPT2Config())


def test_uniform_model_that_vanilla_llama_config_rejects(tmp_path):
    """Llama's config insists hidden % heads == 0; 3 heads on hidden 64 is still a valid model."""
    model = tiny_model("tiny-llama")
    plan = Plan.keep_all(architecture(model))
    for lp in plan.layers:
        lp.heads, lp.kv_heads = [0, 1], [0]
    plan.hidden = list(range(60))  # 60 % 2 == 0: LlamaConfig accepts it, although 2 * 16 != 60
    apply_plan(model, plan)
    out = tmp_path / "m"
    save_pruned(model, tiny_tokenizer(), out, plan=plan)
    report = json.loads((out / "sculpt_report.json").read_text())
    reloaded = load(out, device="cpu").model
    assert torch.equal(reloaded(X).logits, model(X).logits)
    assert report["architecture"]["plain_transformers"] is True
    assert torch.equal(AutoModelForCausalLM.from_pretrained(out)(X).logits, model(X).logits)
    three = tiny_model("tiny-llama")
    plan3 = Plan.keep_all(architecture(three))
    plan3.hidden = list(range(63))  # 63 % 4 != 0: LlamaConfig would refuse this config
    apply_plan(three, plan3)
    save_pruned(three, tiny_tokenizer(), tmp_path / "h63", plan=plan3)
    report = json.loads((tmp_path / "h63" / "sculpt_report.json").read_text())
    assert report["architecture"]["plain_transformers"] is False
    assert torch.equal(load(tmp_path / "h63", device="cpu").model(X).logits, three(X).logits)
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "h63", trust_remote_code=True)
    assert torch.equal(remote(X).logits, three(X).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_layer_model_made_uniform_again_saves_as_plain_family(tmp_path, family):
    """A loaded per-layer model (our config class, model_type sculpt_*) that a second prune makes
    uniform again is saved with the family's own config and loads without remote code."""
    model = tiny_model(family)
    plan = Plan.keep_all(architecture(model))
    plan.layers[0].mlp = list(range(50))
    apply_plan(model, plan)
    save_pruned(model, tiny_tokenizer(), tmp_path / "per-layer")
    loaded = load(tmp_path / "per-layer", device="cpu").model
    assert loaded.config.model_type.startswith("sculpt_")
    again = Plan.keep_all(architecture(loaded))
    for lp in again.layers:
        lp.mlp = list(range(50))
    apply_plan(loaded, again)
    save_pruned(loaded, tiny_tokenizer(), tmp_path / "uniform")
    cfg = json.loads((tmp_path / "uniform" / "config.json").read_text())
    base = family.removeprefix("tiny-").removesuffix("-tied")
    assert cfg["model_type"] == base and "auto_map" not in cfg and "sculpt_layers" not in cfg
    assert cfg["architectures"] == [type(tiny_model(family)).__name__]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "uniform", trust_remote_code=False).eval()
    with torch.no_grad():
        assert torch.equal(plain(X).logits, loaded(X).logits)


def test_outputs_have_the_umask_modes(tmp_path):
    """Not mkdtemp's 0700 nor safetensors' 0600: a server running as another user can read them."""
    import os

    umask = os.umask(0o022)
    try:
        save_pruned(tiny_model("tiny-llama"), tiny_tokenizer(), tmp_path / "out")
    finally:
        os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {0o644}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("heterogeneous", [False, True])
def test_inspect_reads_no_weights(tmp_path, monkeypatch, family, heterogeneous):
    """`inspect` of a saved pruned model builds it on the meta device from config.json and checks the
    safetensors headers: no tensor data is read, and the table is the loaded model's."""
    import safetensors
    import safetensors.torch

    import llmsculpt
    import llmsculpt.models.loading as loading

    model, plan = _pruned(family, heterogeneous)
    out = tmp_path / "out"
    save_pruned(model, tiny_tokenizer(), out, plan=plan, report={"method": "test"})

    def refuse(*a, **k):
        raise AssertionError("inspect read weights")

    for owner, name in ((safetensors, "safe_open"), (safetensors.torch, "safe_open"),
                        (safetensors.torch, "load_file"), (safetensors.torch, "load"), (torch, "load"),
                        (loading, "load"), (loading, "_load_pretrained")):
        monkeypatch.setattr(owner, name, refuse)
    info = llmsculpt.inspect(out)
    assert info.architecture == architecture(model)
    assert info.architecture.layers[1].kv_map == architecture(model).layers[1].kv_map
    assert info.params == sum(p.numel() for p in model.parameters())
    assert info.report["method"] == "test"


def test_inspect_refuses_a_config_that_disagrees_with_the_weights(tmp_path):
    import llmsculpt

    model, plan = _pruned("tiny-llama", False)
    out = tmp_path / "out"
    save_pruned(model, tiny_tokenizer(), out, plan=plan)
    cfg = json.loads((out / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SculptError, match="config.json disagrees with the weights: .*mlp"):
        llmsculpt.inspect(out)
