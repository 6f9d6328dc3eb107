"""vLLM export: every shape either exports with the same logits in transformers (the family's own config,
or the Nemotron-NAS layout with our shipped config/modeling files) or is refused before writing.
That vLLM itself generates the same tokens is tests/test_vllm.py."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmsculpt.errors import SculptError
from llmsculpt.io.export_vllm import export_vllm, layer_layout, plan_layout
from llmsculpt.models.placement import place
from llmsculpt.models.sculpt_modeling import add_output_biases
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import LayerShape, architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model

from _runs import cli

PROMPT = "The quick brown fox jumps over the lazy dog. Pruning removes"


def vllm_case(family: str = "tiny-llama", per_layer: bool = False, *, bias: bool = False, fewer_heads: bool = False,
              **overrides):
    """A tiny model with a real BPE tokenizer; per-layer: fewer heads in layer 0, cluster attention
    (kv_map) in layer 1, a narrower MLP in layer 2; bias: FLAP's o_proj/down_proj-only biases;
    fewer_heads: every layer keeps 2 of 4 query heads and 1 of 2 K/V heads (uniform)."""
    tok = tiny_bpe_tokenizer()
    model = tiny_model(family, vocab_size=len(tok), **overrides)
    if fewer_heads:
        plan = Plan.keep_all(architecture(model))
        for layer in plan.layers:
            layer.heads, layer.kv_heads = [2, 3], [1]
        apply_plan(model, plan)
    if per_layer:
        plan = Plan.keep_all(architecture(model))
        plan.layers[0].heads, plan.layers[0].kv_heads = [2, 3], [1]
        plan.layers[1].heads, plan.layers[1].kv_heads = [0, 2, 3], [0, 1]
        plan.layers[2].mlp = list(range(40))
        apply_plan(model, plan)
    if bias:
        add_output_biases(model, o_proj=True, down_proj=True)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.bias.normal_()
                layer.mlp.down_proj.bias.normal_()
    return model, tok


def _logits(model, tok):
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def test_layer_layout_pads_and_groups():
    even = LayerShape(n_heads=4, n_kv=2, mlp=8, kv_map=(0, 0, 1, 1))
    assert layer_layout(even, 4).slots == (0, 1, 2, 3) and layer_layout(even, 4).kv == (0, 1)
    fewer = LayerShape(n_heads=2, n_kv=1, mlp=8, kv_map=(0, 0))
    assert layer_layout(fewer, 4).slots == (0, 1, None, None) and layer_layout(fewer, 4).kv == (0,)
    cluster = LayerShape(n_heads=3, n_kv=2, mlp=8, kv_map=(0, 1, 1))
    lay = layer_layout(cluster, 4)
    assert lay.slots == (0, None, 1, 2) and lay.kv == (0, 1) and lay.group == 2
    crowded = LayerShape(n_heads=4, n_kv=2, mlp=8, kv_map=(0, 0, 0, 1))  # K/V head 0 duplicated
    lay = layer_layout(crowded, 4)
    assert sorted(s for s in lay.slots if s is not None) == [0, 1, 2, 3] and len(lay.kv) == 4 // lay.group
    assert lay.kv == (0, 0, 0, 1)  # no group size > 1 fits: one K/V head per query head


CASES = [
    ("tiny-llama", False, False, "family"),
    ("tiny-qwen2", False, False, "family"),
    ("tiny-qwen3", False, False, "family"),
    ("tiny-mistral", False, False, "family"),
    ("tiny-llama", True, False, "nemotron-nas"),
    ("tiny-llama-tied", True, False, "nemotron-nas"),
    ("tiny-mistral", True, False, "nemotron-nas"),
    ("tiny-qwen2", True, False, "nemotron-nas"),
    ("tiny-llama", False, True, "nemotron-nas"),  # uniform, but o_proj/down_proj-only biases
    ("tiny-qwen2", True, True, "nemotron-nas"),
]


@pytest.mark.parametrize("family,per_layer,bias,route", CASES)
def test_export_same_logits_in_transformers(tmp_path, family, per_layer, bias, route):
    model, tok = vllm_case(family, per_layer, bias=bias)
    _check_export(tmp_path, model, tok, family, per_layer, bias, route)


@pytest.mark.parametrize("family,route", [("tiny-llama", "family"), ("tiny-qwen2", "nemotron-nas")])
def test_uniform_fewer_heads(tmp_path, family, route):
    """vLLM's Qwen2 computes head_dim as hidden // heads, so pruned-head Qwen2 goes the Nemotron-NAS way."""
    model, tok = vllm_case(family, fewer_heads=True)
    assert plan_layout(model).route == route
    out = export_vllm(model, tok, tmp_path / "served")
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    torch.testing.assert_close(_logits(loaded.eval(), tok), _logits(model, tok), rtol=1e-5, atol=1e-5)


def _check_export(tmp_path, model, tok, family, per_layer, bias, route):
    expected = _logits(model, tok)
    assert plan_layout(model).route == route
    out = export_vllm(model, tok, tmp_path / "served")
    cfg = json.loads((out / "config.json").read_text())
    if route == "family":
        assert "auto_map" not in cfg and cfg["model_type"] == model.config.model_type
        loaded = AutoModelForCausalLM.from_pretrained(out)
    else:
        assert cfg["model_type"] == "nemotron-nas" and cfg["architectures"] == ["DeciLMForCausalLM"]
        assert cfg["num_attention_heads"] == 4 and cfg["head_dim"] == model.config.head_dim
        assert len(cfg["block_configs"]) == 4 and cfg["qkv_bias"] == (family == "tiny-qwen2")
        assert cfg["attention_bias"] == bias and cfg["mlp_bias"] == bias
        assert all("ffn_mult" not in b["ffn"] and "replace_with_linear" not in json.dumps(b)
                   for b in cfg["block_configs"])
        if per_layer:
            assert [b["ffn"]["intermediate_size"] for b in cfg["block_configs"]] == [96, 96, 40, 96]
            assert cfg["block_configs"][0]["attention"]["n_heads_in_group"] == 4  # 2 heads padded to 4, 1 K/V
        assert (out / "configuration_decilm.py").is_file() and (out / "modeling_decilm.py").is_file()
        loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert (out / "tokenizer.json").is_file()
    torch.testing.assert_close(_logits(loaded.eval(), tok), expected, rtol=1e-5, atol=1e-5)


def test_per_layer_qwen3_refused_before_writing(tmp_path):
    model, tok = vllm_case("tiny-qwen3", per_layer=True)
    with pytest.raises(SculptError, match=r"layer \d+: .*q/k norms.*--serve vllm"):
        export_vllm(model, tok, tmp_path / "served")
    assert not (tmp_path / "served").exists() and list(tmp_path.iterdir()) == []


def test_sliding_window_refused():
    model, _ = vllm_case("tiny-mistral", per_layer=True)
    model.config.sliding_window = 16
    with pytest.raises(SculptError, match="sliding-window"):
        plan_layout(model)


def test_cli_export_vllm(tmp_path):
    model, tok = vllm_case("tiny-llama", per_layer=True)
    from llmsculpt.io.save import save_pruned

    save_pruned(model, tok, tmp_path / "pruned")
    code, out, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "vllm", "--out",
                         str(tmp_path / "served"))
    assert code == 0, err
    assert "Nemotron-NAS" in out and "3 zero-padded" in out
    from llmsculpt.config import ExportConfig  # the effective recipe, inside the directory

    assert ExportConfig.from_yaml(tmp_path / "served" / "recipe.yaml").format == "vllm"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "served", trust_remote_code=True)
    torch.testing.assert_close(_logits(loaded.eval(), tok), _logits(model, tok), rtol=1e-5, atol=1e-5)
    code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "vllm", "--out",
                       str(tmp_path / "served"))
    assert code != 0 and "--overwrite" in err

    qwen3, tok3 = vllm_case("tiny-qwen3", per_layer=True)
    save_pruned(qwen3, tok3, tmp_path / "q3")
    code, _, err = cli("export", "--model", str(tmp_path / "q3"), "--format", "vllm", "--out", str(tmp_path / "q3v"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "layer 1" in err
    assert not (tmp_path / "q3v").exists()


def test_cli_keeps_the_checkpoint_dtype(tmp_path):
    from llmsculpt.io.save import save_pruned
    from safetensors import safe_open

    model, tok = vllm_case("tiny-llama", per_layer=True)
    save_pruned(place(model, dtype=torch.bfloat16), tok, tmp_path / "pruned")
    code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "vllm", "--out", str(tmp_path / "s"))
    assert code == 0, err
    with safe_open(str(tmp_path / "s" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    assert json.loads((tmp_path / "s" / "config.json").read_text())["dtype"] == "bfloat16"


NAS_CASES = [(f, p, b) for f, p, b, route in CASES if route == "nemotron-nas"]


@pytest.mark.parametrize("family,per_layer,bias", NAS_CASES)
def test_llmsculpt_load_of_nas_export_is_the_pruned_model(tmp_path, family, per_layer, bias):
    """llmsculpt.load undoes the export's padding and K/V grouping: the pruned model's own shapes,
    parameter count and (exactly) its logits; inspect shows the same table without reading weights."""
    import llmsculpt

    model, tok = vllm_case(family, per_layer, bias=bias)
    out = export_vllm(model, tok, tmp_path / "served")
    loaded = llmsculpt.load(out, device="cpu", dtype="auto").model
    assert architecture(loaded) == architecture(model)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.equal(_logits(loaded, tok), _logits(model, tok))
    assert llmsculpt.inspect(out).architecture == architecture(model)


def test_llmsculpt_load_of_nas_export_bf16_and_uniform_qwen2(tmp_path):
    import llmsculpt

    model, tok = vllm_case("tiny-llama", per_layer=True)
    model = place(model, dtype=torch.bfloat16)  # rotary tables stay fp32, as loading keeps them
    out = export_vllm(model, tok, tmp_path / "bf16")
    loaded = llmsculpt.load(out, device="cpu", dtype="auto").model
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert torch.equal(_logits(loaded, tok), _logits(model, tok))  # padded heads are zero: the same sums
    qwen, qtok = vllm_case("tiny-qwen2", fewer_heads=True)  # uniform, but vLLM's Qwen2 needs the NAS route
    out = export_vllm(qwen, qtok, tmp_path / "qwen")
    loaded = llmsculpt.load(out, device="cpu").model
    assert architecture(loaded) == architecture(qwen) and torch.equal(_logits(loaded, qtok), _logits(qwen, qtok))


def test_foreign_nas_directory_is_refused_in_one_line(tmp_path):
    import llmsculpt

    model, tok = vllm_case("tiny-llama", per_layer=True)
    out = export_vllm(model, tok, tmp_path / "served")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["sculpt_source_config"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SculptError, match="not written by llmsculpt.*trust_remote_code=True"):
        llmsculpt.load(out, device="cpu")


def _front(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_exports_carry_model_cards(tmp_path):
    """vLLM exports get a README.md inside, GGUF exports a <file>.README.md beside the file: the source's
    numbers and recipe, the per-layer table, and the commands that run that export."""
    import llmsculpt

    text = "The quick brown fox jumps over the lazy dog. Pruning removes heads. " * 60
    model, tok = vllm_case("tiny-llama")  # a byte-level BPE tokenizer, which GGUF needs
    pruned = llmsculpt.prune(model, tokenizer=tok, ratio=0.3, method="adaptive", calib_text=text, eval_text=text,
                             data={"n_samples": 4, "seq_len": 32})
    assert not pruned.architecture.is_uniform
    pruned.save(tmp_path / "pruned")
    code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "vllm", "--out",
                       str(tmp_path / "served"))
    assert code == 0, err
    card = (tmp_path / "served" / "README.md").read_text()
    assert _front(card)["library_name"] == "transformers" and "adaptive" in _front(card)["tags"]
    assert f"{pruned.report['params_before']:,} -> {pruned.report['params_after']:,}" in card
    assert "vllm serve served --trust-remote-code" in card and "Nemotron-NAS" in card
    assert 'from_pretrained("served", trust_remote_code=True)' in card
    table = [line for line in card.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 4
    code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "gguf", "--dtype", "f32",
                       "--out", str(tmp_path / "m.gguf"))
    assert code == 0, err
    gguf_card = (tmp_path / "m.gguf.README.md").read_text()
    assert "gguf" in _front(gguf_card)["tags"] and "llama-cli -m m.gguf" in gguf_card
    assert "architecture `deci`" in gguf_card and "do not read per-layer" in gguf_card


def test_export_loads_onto_the_given_device(tmp_path, monkeypatch):
    import llmsculpt.models.loading as loading

    model, tok = vllm_case("tiny-llama", per_layer=True)
    from llmsculpt.io.save import save_pruned

    save_pruned(model, tok, tmp_path / "pruned")
    seen = []
    real = loading.load

    def spy(*a, **k):
        loaded = real(*a, **k)
        seen.append(next(loaded.model.parameters()).device)
        return loaded

    monkeypatch.setattr(loading, "load", spy)
    for fmt, out in (("vllm", "v"), ("gguf", "m.gguf"), ("hf", "h")):
        code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", fmt, "--device", "cpu",
                           "--out", str(tmp_path / out))
        assert code == (0 if fmt != "hf" else 2), err  # hf: a per-layer model has no plain config (refused)
    assert seen == [torch.device("cpu")] * 3
    code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "vllm", "--device", "cuda:7",
                       "--out", str(tmp_path / "v2"))
    assert code == 2 and ("CUDA is not available" in err or "does not exist" in err)
    assert not (tmp_path / "v2").exists()


def test_hf_export_keeps_the_checkpoint_dtype(tmp_path):
    import llmsculpt
    from llmsculpt.io.save import save_pruned

    model, tok = vllm_case("tiny-llama", fewer_heads=True)  # uniform: a plain config describes it
    save_pruned(place(model, dtype=torch.bfloat16), tok, tmp_path / "pruned")
    code, _, err = cli("export", "--model", str(tmp_path / "pruned"), "--format", "hf", "--out", str(tmp_path / "h"))
    assert code == 0, err
    loaded = llmsculpt.load(tmp_path / "h", device="cpu", dtype="auto").model
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert "pipeline_tag: text-generation" in (tmp_path / "h" / "README.md").read_text()
    assert torch.equal(_logits(loaded, tok), _logits(model, tok))
