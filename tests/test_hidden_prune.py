"""Hidden (stem) channel pruning in `sculpt prune` (issue 17): ``PruneConfig.hidden`` / ``--hidden``.

Plans from every method that can score hidden channels give pruned ≡ masked logits on every tiny
family; the parameter count is the plan's and lands on the target; streamed and whole-gradient
hidden scores agree; A = 0 adaptive is iterative uniform; same seed, same plan; save → load, GGUF
and vLLM exports keep the logits; the methods that cannot are refused before anything loads.
"""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from llmsculpt.allocation import PruneScope, solve_uniform_offset
from llmsculpt.config import PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.importance import get_metric
from llmsculpt.importance.groups import GroupReducer, score_groups
from llmsculpt.measure import LocalEngine
from llmsculpt.methods import PruneContext, get_method
from llmsculpt.methods.oneshot import needs_for
from llmsculpt.structures.shapes import Architecture, LayerShape, architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model
from llmsculpt.testing.masking import mask_plan

from _runs import cli
from conftest import FAMILIES

X = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))


def calib(seed: int) -> torch.Tensor:
    return torch.randint(4, 128, (4, 32), generator=torch.Generator().manual_seed(seed))


def plan_of(method: str, model, **fields):
    cfg = PruneConfig(method=method, **{"ratio": 0.3, "hidden": True, **fields})
    cfg.check_options()
    return get_method(method).plan(PruneContext(model, None, cfg, calib))


def stem_params(arch: Architecture) -> int:
    """Parameters of one hidden channel (a column of every layer, the embeddings, the norms)."""
    return arch.param_count() - replace(arch, hidden=arch.hidden - 1).param_count()


# uniform (Taylor) on every family, and each family one more method
OTHER = {"tiny-llama": "adaptive", "tiny-llama-tied": "wanda-sp", "tiny-mistral": "magnitude", "tiny-qwen2": "adaptive",
         "tiny-qwen3": "wanda-sp"}


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_plans_pruned_equal_masked_and_count(family):
    model = tiny_model(family, rms_norm_eps=1e-12, num_hidden_layers=3)
    arch = architecture(model)
    target = PruneConfig(ratio=0.3).removal_target(arch.param_count())
    for method in ("uniform", OTHER[family]):
        extra = {"options": {"steps": 2}} if method == "adaptive" else {}
        plan = plan_of(method, copy.deepcopy(model), **extra).plan
        assert plan.hidden is not None and len(plan.hidden) < arch.hidden, method
        ref = mask_plan(copy.deepcopy(model), plan)(X).logits
        pruned = apply_plan(copy.deepcopy(model), plan)
        torch.testing.assert_close(pruned(X).logits, ref, atol=1e-5, rtol=1e-5)
        assert count_params(pruned) == plan.resulting(arch).param_count() == architecture(pruned).param_count()
        removed = arch.param_count() - count_params(pruned)
        # on the target to within less than one hidden channel (the solver re-solves the layers)
        assert 0 <= removed - target < stem_params(arch), (method, removed, target)


def test_hidden_off_changes_nothing_and_the_rate_scales():
    model = tiny_model("tiny-llama", num_hidden_layers=2)
    arch = architecture(model)
    off = plan_of("uniform", model, hidden=False).plan
    assert off.hidden is None and PruneConfig().hidden == 0.0
    half = plan_of("uniform", model, hidden=0.5)
    full = plan_of("uniform", model, hidden=1.0)
    assert arch.hidden > len(half.plan.hidden) > len(full.plan.hidden)
    assert full.history["hidden"] == len(full.plan.hidden) and full.history["hidden_before"] == arch.hidden


def test_solver_hits_the_target_on_a_default_sized_model():
    """smollm2-135m's shapes, 40 %: the hidden width is the layers' common sparsity, and the
    total lands within one MLP channel per layer of the target (not one hidden channel)."""
    ls = LayerShape(n_heads=9, n_kv=3, mlp=1536, kv_map=tuple(h // 3 for h in range(9)))
    arch = Architecture(model_type="llama", vocab=49152, hidden=576, head_dim=64, layers=(ls,) * 30, tied=True,
                        qkv_bias=False)
    remove = int(0.4 * arch.param_count())
    for scope in (PruneScope(hidden=1.0), PruneScope(hidden=1.0, split="importance"), PruneScope(hidden=0.5)):
        s, budgets = solve_uniform_offset(arch, remove, scope)
        at = replace(arch, hidden=budgets.hidden)
        removed = arch.param_count() - at.param_count() + sum(b.removed_params for b in budgets.values())
        assert 0 <= removed - remove <= 30 * 3 * budgets.hidden
        assert abs(budgets.hidden - 576 * (1 - scope.hidden * s)) <= 1.5
    s0, plain = solve_uniform_offset(arch, remove, PruneScope())
    assert plain.hidden is None and s0 > s
    _, rounded = solve_uniform_offset(arch, remove, PruneScope(hidden=1.0, round_to=32))  # --round-to / --serve llamacpp
    at = replace(arch, hidden=rounded.hidden)
    removed = arch.param_count() - at.param_count() + sum(b.removed_params for b in rounded.values())
    assert rounded.hidden % 32 == 0 and all(b.mlp_channels % 32 == 0 for b in rounded.values())
    assert 0 <= removed - remove <= 32 * 3 * rounded.hidden


def test_streamed_hidden_scores_equal_whole_gradients():
    model = tiny_model("tiny-llama")
    batch = calib(0)
    for name in ("taylor", "taylor_vector"):
        metric = get_metric(name)
        needs = needs_for(metric, hidden=True)
        assert needs.grad_params == "hidden"
        whole = LocalEngine().measure(model, batch, needs)
        streamed = LocalEngine().measure(model, batch, needs, reducer=GroupReducer(model, [metric], hidden=True))
        assert not streamed.grad and streamed.reduced
        a = score_groups(model, whole, metric, hidden=True)
        b = score_groups(model, streamed, metric, hidden=True)
        torch.testing.assert_close(a.hidden, b.hidden, rtol=1e-6, atol=0)
        torch.testing.assert_close(a.layers[1].mlp, b.layers[1].mlp, rtol=1e-6, atol=0)


def test_adaptive_amplitude_zero_is_uniform_with_hidden():
    base = tiny_model("tiny-qwen2", num_hidden_layers=2)
    one = plan_of("adaptive", copy.deepcopy(base), split="proportional", options={"amplitude": 0.0, "steps": 1})
    uni = plan_of("uniform", copy.deepcopy(base), split="proportional")
    assert one.plan.to_dict()["layers"] == uni.plan.to_dict()["layers"] and one.plan.hidden == uni.plan.hidden
    two = plan_of("adaptive", copy.deepcopy(base), options={"amplitude": 0.0, "steps": 2})
    old = plan_of("adaptive", copy.deepcopy(base), options={"amplitude": 0.0, "steps": 2, "cumulative": False})
    assert two.plan.to_dict() == old.plan.to_dict()
    widths = [st["hidden"] for st in two.history["steps"]]
    assert widths[0] > widths[1] == len(two.plan.hidden)  # the hidden width follows the schedule
    for st in two.history["steps"]:
        assert len({round(v, 9) for v in st["sparsity"].values()}) == 1


def test_same_seed_same_plan():
    plans = [plan_of("adaptive", tiny_model("tiny-llama", num_hidden_layers=2), seed=3, options={"steps": 2}).plan.to_dict()
             for _ in range(2)]
    assert plans[0] == plans[1] and plans[0]["hidden"] is not None


@pytest.mark.parametrize("method", ["flap", "shortgpt", "sample_aware"])
def test_methods_that_cannot_are_refused_before_loading(method):
    from llmsculpt.api import prune

    with pytest.raises(SculptError, match=f"method {method} cannot prune hidden channels"):
        prune("/nonexistent/model/dir", method=method, hidden=True, ratio=0.2)


def test_config_and_cli():
    assert PruneConfig(hidden=True).hidden == 1.0 and PruneConfig(hidden=0.5).hidden == 0.5
    assert PruneConfig.from_dict({"hidden": True}).hidden == 1.0
    assert PruneConfig.from_dict(PruneConfig(hidden=0.5).to_dict()).hidden == 0.5
    with pytest.raises(SculptError, match="hidden must be"):
        PruneConfig(hidden="lots")
    with pytest.raises(SculptError, match="hidden must be"):
        PruneConfig(hidden=-1)
    code, _, err = cli("prune", "--model", "tiny-llama", "--method", "flap", "--hidden", "--dry-run")
    assert code != 0 and "cannot prune hidden channels" in err and "Traceback" not in err
    import argparse

    from llmsculpt.cli.prune import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert build_config(parser.parse_args(["--hidden", "--ratio", "0.3"])).hidden == 1.0
    assert build_config(parser.parse_args(["--hidden", "0.5"])).hidden == 0.5
    assert build_config(parser.parse_args([])).hidden == 0.0


def test_save_load_and_exports_keep_the_logits(tmp_path):
    import llmsculpt
    from llmsculpt.api import prune
    from llmsculpt.io.export_gguf import export_gguf
    from llmsculpt.io.export_vllm import export_vllm
    from llmsculpt.plan import Plan

    tok = tiny_bpe_tokenizer()
    model = tiny_model("tiny-llama", vocab_size=len(tok))
    out = prune(model, tokenizer=tok, method="uniform", hidden=True, ratio=0.3, calib_text="abc def " * 400,
                n_samples=4, seq_len=32, out=tmp_path / "pruned")
    pruned = out.model
    ids = tok("The quick brown fox jumps over the lazy dog.", add_special_tokens=False).input_ids
    x = torch.tensor([ids])
    with torch.no_grad():
        want = pruned(x).logits
    assert architecture(pruned).hidden == len(out.plan.hidden) < 64
    assert Plan.load(tmp_path / "pruned" / "plan.json").hidden == out.plan.hidden
    loaded = llmsculpt.load(tmp_path / "pruned", device="cpu").model
    assert torch.equal(loaded(x).logits, want)
    served = export_vllm(pruned, tok, tmp_path / "served")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(served, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, want, rtol=1e-5, atol=1e-5)
    gguf_path = export_gguf(pruned, tok, tmp_path / "m.gguf", dtype="f32")
    pytest.importorskip("llama_cpp")
    from llmsculpt.testing.llama_cpp import open_llama

    llm = open_llama(gguf_path, logits_all=True, verbose=False, n_ctx=64, n_batch=64, n_threads=2, type_k=0, type_v=0)
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    ours = want[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(ours).max()
