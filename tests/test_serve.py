"""``--serve``: the planners only produce shapes the named runtime serves exactly (allocation/serving.py),
and under ``--serve any`` every shape either exports or is refused up front naming the layer and the
``--serve`` mode that avoids it."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import llmsculpt
from llmsculpt.allocation.serving import check_servable, serve_rules
from llmsculpt.config import PretrainPruneConfig, PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.io.export_gguf import export_gguf
from llmsculpt.io.export_vllm import export_vllm, plan_layout, served_params
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery.config import is_vanilla
from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model, tiny_tokenizer



CALIB = "The pruned model keeps its most important heads and channels. " * 60
ADAPTIVE = dict(method="adaptive", options={"steps": 2})
PLANNERS = {"uniform": dict(method="uniform"), "adaptive": ADAPTIVE, "flap": dict(method="flap")}


def _prune(family: str, *, model=None, tokenizer=None, **kw):
    model = model if model is not None else tiny_model(family)
    kw = {"ratio": 0.4, **kw}
    return llmsculpt.prune(model, tokenizer=tokenizer or tiny_tokenizer(), calib_text=CALIB, seed=0, n_samples=4,
                           seq_len=32, **kw)


def _attention(arch):
    return {(ls.n_heads, ls.n_kv, ls.kv_map) for ls in arch.layers}


@pytest.mark.parametrize("family,planner,attn_unit", [
    ("tiny-llama", "uniform", "kv"), ("tiny-qwen2", "adaptive", "head")])  # qwen3: tied under vllm, below
def test_serve_uniform_is_a_plain_family_checkpoint(family, planner, attn_unit):
    out = _prune(family, serve="uniform", attn_unit=attn_unit, **PLANNERS[planner])
    arch = architecture(out.model)
    assert arch.is_uniform and is_vanilla(out.model.config)
    assert count_params(out.model) < count_params(tiny_model(family))


@pytest.mark.parametrize("family,planner,attn_unit", [
    ("tiny-llama", "adaptive", "kv"), ("tiny-llama", "flap", "kv"), ("tiny-llama", "flap", "head"),
    ("tiny-qwen2", "adaptive", "head")])
def test_serve_vllm_keeps_one_query_head_count_and_needs_no_padding(family, planner, attn_unit):
    out = _prune(family, serve="vllm", attn_unit=attn_unit, **PLANNERS[planner])
    arch = architecture(out.model)
    assert len(_attention(arch)) == 1 and arch.layers[0].is_grouped_evenly
    layout = plan_layout(out.model)
    assert layout.padded_heads == 0 and all(None not in lay.kv for lay in layout.layers)
    if planner != "flap":  # FLAP's export also declares the zero k/v/gate/up biases it lacks
        assert served_params(out.model) == count_params(out.model)


def test_serve_vllm_adaptive_keeps_per_layer_mlp_and_qwen3_is_tied_entirely():
    out = _prune("tiny-llama", serve="vllm", ratio=0.3, **ADAPTIVE)
    assert len({ls.mlp for ls in architecture(out.model).layers}) > 1  # the MLP widths stay adaptive
    qwen3 = architecture(_prune("tiny-qwen3", serve="vllm", **ADAPTIVE).model)  # no per-layer route: uniform
    assert qwen3.is_uniform


def test_serve_vllm_export_round_trips_logits(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_model("tiny-llama", vocab_size=len(tok))
    out = _prune("tiny-llama", model=model, tokenizer=tok, serve="vllm", ratio=0.3, **ADAPTIVE)
    assert plan_layout(out.model).route == "nemotron-nas"
    export_vllm(out.model, tok, tmp_path / "served")
    ids = tok("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "served", trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(served(ids).logits, out.model(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2"])
def test_serve_llamacpp_exports_q8_0(tmp_path, family):
    tok = tiny_bpe_tokenizer()
    out = _prune(family, model=tiny_model(family, vocab_size=len(tok)), tokenizer=tok, serve="llamacpp", **ADAPTIVE)
    arch = architecture(out.model)
    assert all(ls.mlp % 32 == 0 and ls.n_heads * arch.head_dim % 32 == 0 for ls in arch.layers)  # --round-to 32
    assert family == "tiny-llama" or arch.is_uniform  # llama.cpp has no per-layer qwen2 graph
    export_gguf(out.model, tok, tmp_path / "m.gguf", dtype="q8_0")


@pytest.mark.parametrize("serve", ["uniform", "vllm"])
@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_pruning_aware_steps_keep_the_serve_rules(serve, kind):
    from llmsculpt.importance.saliency import Saliency
    from llmsculpt.methods.pruning_aware import choose, plan_for
    from llmsculpt.surgery import apply_plan

    model = tiny_model("tiny-llama")
    cfg = PretrainPruneConfig(target_params=10_000, serve=serve, fixed_order=(kind,))
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        arch = architecture(model)
        sal = Saliency(heads=[torch.rand(ls.n_heads, generator=g) for ls in arch.layers],
                       mlp=[torch.rand(ls.mlp, generator=g) for ls in arch.layers], stem=torch.rand(arch.hidden))
        kind_, units, _ = choose(sal, arch, cfg, budget=3000, left=10**6, prune_done=step)
        apply_plan(model, plan_for(arch, kind_, units))
    arch = architecture(model)
    assert len(_attention(arch)) == 1 and arch.layers[0].is_grouped_evenly
    assert serve == "vllm" or arch.is_uniform
    assert count_params(model) < count_params(tiny_model("tiny-llama"))


def test_refusals_name_the_reason_and_the_way_out():
    with pytest.raises(SculptError, match=r"--serve uniform: FLAP.*--method adaptive"):
        _prune("tiny-llama", serve="uniform", method="flap")
    with pytest.raises(SculptError, match=r"--serve vllm: .*layer range.*drop --layers or add --no-attention"):
        _prune("tiny-llama", serve="vllm", layers="1-2", **ADAPTIVE)
    _prune("tiny-llama", serve="vllm", layers="1-2", attention=False, ratio=0.1, **ADAPTIVE)  # MLP widths are free
    mistral = tiny_model("tiny-mistral")
    mistral.config.sliding_window = 16
    with pytest.raises(SculptError, match=r"sliding-window.*--serve uniform"):
        check_servable(mistral, "vllm")


@pytest.mark.parametrize("family,planner,attn_unit", [  # per-layer shapes, cluster attention, FLAP biases
    ("tiny-llama", "flap", "head"), ("tiny-mistral", "flap", "kv"), ("tiny-qwen2", "adaptive", "head"),
    ("tiny-qwen3", "adaptive", "kv"), ("tiny-qwen3", "flap", "head")])
def test_serve_any_shapes_export_or_are_refused_up_front(tmp_path, family, planner, attn_unit):
    tok = tiny_bpe_tokenizer()
    out = _prune(family, model=tiny_model(family, vocab_size=len(tok)), tokenizer=tok, attn_unit=attn_unit,
                 **PLANNERS[planner])
    for name, export in (("vllm", lambda p: export_vllm(out.model, tok, p)),
                         ("gguf", lambda p: export_gguf(out.model, tok, p, dtype="f32"))):
        target = tmp_path / name
        try:
            export(target if name == "vllm" else target.with_suffix(".gguf"))
        except SculptError as exc:
            msg = str(exc)
            assert "\n" not in msg and "--serve" in msg and "layer" in msg, msg
            assert not any(tmp_path.iterdir()) or name == "gguf" and not target.with_suffix(".gguf").exists()


def test_serve_any_is_the_default_and_changes_nothing():
    assert PruneConfig().serve == "any" and PruneConfig().round_to is None
    assert serve_rules(architecture(tiny_model("tiny-llama")), "any").ties is False
    assert PruneConfig(serve="llamacpp").round_to is None  # resolved where planned: 32 (allocation/serving.py)
    with pytest.raises(SculptError, match="serve must be one of any, uniform, vllm, llamacpp"):
        PruneConfig(serve="tgi")


def test_cli_serve_flag_reaches_the_recipe(tmp_path):
    from llmsculpt.cli.main import build_parser
    from llmsculpt.cli.prune import build_config

    args = build_parser().parse_args(["prune", "--model", "tiny-llama", "--serve", "uniform", "--out", str(tmp_path)])
    cfg = build_config(args)
    assert cfg.serve == "uniform"
    cfg.to_yaml(tmp_path / "recipe.yaml")
    assert PruneConfig.from_yaml(tmp_path / "recipe.yaml").serve == "uniform"
    for command, extra in (("accel", ["--out", "a"]), ("search", ["--study", "s"]), ("pretrain-prune", ["--out", "p"])):
        assert build_parser().parse_args([command, "--serve", "vllm", *extra]).serve == "vllm"
