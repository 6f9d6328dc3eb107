"""LoRA on every shape we produce: cluster-attention layers (query heads spread unevenly over K/V
heads, ``HeadGatherLinear``) train, merge, save and reload exactly, through peft and the CLI."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmsculpt.io.save import save_pruned
from llmsculpt.config import AccelConfig
from llmsculpt.run import run_accel
from llmsculpt.models.loading import load
from llmsculpt.models.sculpt_modeling import HeadGatherLinear
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model, tiny_tokenizer
from llmsculpt.train.data import load_examples
from llmsculpt.train.finetune import finetune
from llmsculpt.train.trainer import add_lora, lora_layers, merge_lora

from _runs import TEXT

FAMILIES = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"]
X = torch.randint(4, 128, (2, 12), generator=torch.Generator().manual_seed(3))


def cluster_model(name: str = "tiny-llama"):
    """Layers 0 and 1 keep 3 of 4 query heads: K/V head 0 serves 2 of them, head 1 one (or the reverse)."""
    model = tiny_model(name)
    plan = Plan.keep_all(architecture(model))
    plan.layers[0].heads, plan.layers[1].heads = [0, 1, 2], [1, 2, 3]
    apply_plan(model, plan)
    assert any(isinstance(m, HeadGatherLinear) for m in model.modules())
    return model, plan


def _logits(model):
    with torch.no_grad():
        return model(input_ids=X).logits


def _alpaca(path, n=8):
    path.write_text("\n".join(json.dumps({"instruction": f"Repeat {i % 3}", "output": "ok ok ok"}) for i in range(n)))
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_zero_lora_is_exact_and_a_trained_one_merges_exactly(name):
    model, _ = cluster_model(name)
    base = _logits(model)
    peft_model = add_lora(copy.deepcopy(model))
    assert torch.equal(_logits(peft_model), base)  # B = 0: the adapters change nothing
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(n)))
    adapted = _logits(peft_model)
    assert not torch.allclose(adapted, base, atol=1e-3)
    merged = merge_lora(peft_model)
    assert isinstance(merged.model.layers[0].self_attn.k_proj, HeadGatherLinear)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert count_params(merged) == count_params(model)
    assert torch.allclose(_logits(merged), adapted, atol=1e-5)


def test_peft_directly_with_the_registered_layer():
    import peft

    model, _ = cluster_model()
    cfg = peft.LoraConfig(r=4, target_modules=["k_proj", "v_proj"], task_type="CAUSAL_LM")
    cfg._register_custom_module(lora_layers())
    peft_model = peft.get_peft_model(model, cfg)
    peft_model(input_ids=X, labels=X).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "layers.0.self_attn.k_proj.lora_B" in n]
    assert grads and grads[0].abs().sum() > 0


def test_finetuned_cluster_model_saves_and_reloads_with_the_same_logits(tmp_path):
    model, plan = cluster_model()
    tok = tiny_tokenizer()
    examples, _ = load_examples(_alpaca(tmp_path / "a.jsonl"), tok, fmt="alpaca", seq_len=64)
    merged, log = finetune(model, tok, examples, epochs=2, lr=5e-3, progress=False)
    assert isinstance(merged.model.layers[1].self_attn.v_proj, HeadGatherLinear)
    save_pruned(merged, tok, tmp_path / "m", plan=plan)
    want = _logits(merged)
    for reloaded in (load(tmp_path / "m", device="cpu").model,
                     AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)):
        assert torch.equal(_logits(reloaded.eval()), want)


def test_finetune_cli_lora_on_a_cluster_model(tmp_path, capsys):
    from llmsculpt.cli.main import main

    model, plan = cluster_model("tiny-qwen2")
    save_pruned(model, tiny_tokenizer(), tmp_path / "pruned", plan=plan)
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(tmp_path / "pruned"), "--data", str(_alpaca(tmp_path / "a.jsonl")),
                 "--epochs", "2", "--lr", "5e-3", "--seq-len", "64", "--out", str(out)]) == 0
    after = load(out, device="cpu").model
    assert isinstance(after.model.layers[0].self_attn.k_proj, HeadGatherLinear)
    assert count_params(after) == count_params(model)
    assert not torch.equal(_logits(after), _logits(model))  # it trained


def test_accel_lora_on_a_cluster_model(tmp_path):
    model, _ = cluster_model()
    tok = tiny_tokenizer()
    (tmp_path / "t.txt").write_text(TEXT)
    examples, _ = load_examples(tmp_path / "t.txt", tok, fmt="text", seq_len=32)
    cfg = AccelConfig(target_params=count_params(model) - 10_000, phases=2, batch_size=4, lr=1e-3, min_lr=1e-4,
                      checkpoint_every=3, calib_samples=4, calib_len=32, prune_steps=1, mode="lora")
    pruned, _, log = run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "c", progress=False)
    assert count_params(pruned) <= cfg.target_params and {e["phase"] for e in log} == {0, 1}
    assert isinstance(pruned.model.layers[0].self_attn.k_proj, HeadGatherLinear)  # trained with LoRA as such
    assert not any("lora" in n for n, _ in pruned.named_parameters())
