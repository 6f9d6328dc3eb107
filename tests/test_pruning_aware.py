"""EfficientLLM pruning-aware training: mini-group plans are exact, stem pruning keeps layers
equal, OBS lowers reconstruction error and the loss jump, cluster attention saves and reloads."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmsculpt.errors import SculptError
from llmsculpt.io.save import save_pruned
from llmsculpt.models.loading import load
from llmsculpt.methods.pruning_aware import plan_for
from llmsculpt.config import PretrainPruneConfig
from llmsculpt.run import pretrain_prune
from llmsculpt.importance.obs import obs_remove_columns, obs_updates
from llmsculpt.measure.hooks import input_hessians
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model, tiny_tokenizer
from llmsculpt.testing.masking import mask_plan

from _runs import token_blocks as examples

X = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kind, units",
    [("attention", [(0, 1), (1, 0), (1, 1), (2, 3)]), ("mlp", [(0, 3), (3, 90), (3, 1)]), ("stem", [(5,), (17,), (63,)])],
)
def test_each_mini_group_removes_exactly_its_part(kind, units):
    model = tiny_model("tiny-qwen3", rms_norm_eps=1e-12)
    arch = architecture(model)
    plan = plan_for(arch, kind, units)
    ref = mask_plan(copy.deepcopy(model), plan)(X).logits
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert torch.allclose(pruned(X).logits, ref, atol=1e-5)
    after = architecture(pruned)
    if kind == "attention":  # layer 1 lost both heads of K/V head 0; layer 0 keeps K/V head 0 for head 0
        assert [(ls.n_heads, ls.n_kv) for ls in after.layers] == [(3, 2), (2, 1), (3, 2), (4, 2)]
        assert after.layers[0].kv_map == (0, 1, 1)
    if kind == "stem":
        assert after.hidden == 61
        for layer in pruned.model.layers:
            assert layer.self_attn.q_proj.in_features == layer.mlp.down_proj.out_features == 61


def test_obs_lowers_reconstruction_error_on_a_toy_layer():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(16, 16, generator=g)
    x = mix @ torch.randn(16, 400, generator=g)  # correlated inputs: OBS has something to exploit
    w = torch.randn(8, 16, generator=g)
    cols = [1, 5, 9]
    plain = w.clone()
    plain[:, cols] = 0
    obs = obs_remove_columns(w, x @ x.T, cols, damp=1e-6)
    assert torch.all(obs[:, cols] == 0)
    err_plain = (w @ x - plain @ x).norm()
    err_obs = (w @ x - obs @ x).norm()
    assert err_obs < 0.5 * err_plain


def test_obs_reduces_the_loss_jump_of_a_pruning_step():
    model = tiny_model("tiny-llama")
    arch = architecture(model)
    batch = torch.randint(4, 128, (8, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), input_hessians(model, True) as hess:
        base = model(input_ids=batch, labels=batch).loss.item()
    units = [(i, c) for i in range(4) for c in range(0, 96, 3)]
    plain = apply_plan(copy.deepcopy(model), plan_for(arch, "mlp", units))
    plan = plan_for(arch, "mlp", units)
    plan.updates = obs_updates(model, arch, "mlp", units, hess)
    obs = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        jump_plain = model_loss(plain, batch) - base
        jump_obs = model_loss(obs, batch) - base
    assert jump_obs < jump_plain


def model_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss.item()


def test_cluster_attention_saves_reloads_and_generates(tmp_path):
    model = tiny_model("tiny-llama")
    model, plan, log = pretrain_prune(model, tiny_tokenizer(), examples(), PretrainPruneConfig(
        target_params=125_000, fixed_order=("attention",), cycle="1:0", quantum=0.03), progress=False)
    arch = architecture(model)
    assert {e["type"] for e in log} == {"attention"} and not arch.is_uniform
    assert any(not ls.is_grouped_evenly for ls in arch.layers)  # uneven query heads per K/V head
    save_pruned(model, tiny_tokenizer(), tmp_path / "m", plan=plan)
    for reloaded in (load(tmp_path / "m", device="cpu").model,
                     AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)):
        assert torch.equal(reloaded(X).logits, model(X).logits)
        want = model.generate(X[:, :4], max_new_tokens=5, do_sample=False)
        assert torch.equal(reloaded.generate(X[:, :4], max_new_tokens=5, do_sample=False), want)


def test_run_reaches_budget_with_training_between(tmp_path):
    model = tiny_model("tiny-mistral")
    cfg = PretrainPruneConfig(target_params=100_000, cycle="2:1", quantum=0.04, continue_steps=2)
    model, plan, log = pretrain_prune(model, tiny_tokenizer(), examples(), cfg, progress=False)
    assert count_params(model) <= 100_000
    kinds = [e["type"] for e in log]
    assert "train" in kinds and kinds[-2:] == ["train", "train"]
    assert all(a["tokens"] <= b["tokens"] for a, b in zip(log, log[1:]))


def test_cli_end_to_end(tmp_path, capsys):
    from llmsculpt.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("Pruning-aware training lets the architecture design itself while it learns. " * 80)
    out = tmp_path / "out"
    code = main(["pretrain-prune", "--model", "tiny-llama", "--target-params", "110000", "--data", str(corpus),
                 "--seq-len", "32", "--quantum", "0.05", "--out", str(out)])
    assert code == 0
    lines = (out / "trajectory.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] in ("attention", "mlp", "stem")
    assert (out / "trajectory.png").exists()
    first = (out / "model.safetensors").read_bytes()
    # --resume picks the run up from <out>.ckpt (here: its final checkpoint, so nothing is left to do)
    assert main(["pretrain-prune", "--model", "tiny-llama", "--target-params", "110000", "--data", str(corpus),
                 "--seq-len", "32", "--quantum", "0.05", "--out", str(out), "--resume", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == first
    assert len((out / "trajectory.jsonl").read_text().splitlines()) == len(lines)
    assert main(["pretrain-prune", "--model", "tiny-llama", "--target-params", "110000", "--data", str(corpus),
                 "--seq-len", "32", "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["pretrain-prune", "--model", "tiny-llama", "--target-params", "110000", "--data", str(corpus),
                 "--cycle", "x", "--out", str(tmp_path / "bad")]) == 2


def test_obc_scores_are_the_errors_left_after_the_obs_update():
    """For an MLP channel and a head, the obc saliency (× parameters freed) equals the layer-output
    error ‖(W − W')X‖² after removing it with the OBS update (same damped Hessian)."""
    from llmsculpt.importance.obs import damped
    from llmsculpt.importance.saliency import obc_saliency, unit_params

    model = tiny_model("tiny-llama")
    arch = architecture(model)
    with torch.no_grad(), input_hessians(model, True, inputs=True) as hess:
        model(input_ids=X)
    assert {k[1] for k in hess} == {"o", "down", "attn_in", "mlp_in"}
    sal = obc_saliency(model, arch, hess)
    sizes = unit_params(arch)
    layer = model.model.layers[2]
    hd = arch.head_dim

    def error(weight, h, cols):
        delta = weight.double() - obs_remove_columns(weight, h, cols).double()
        return torch.trace(delta @ damped(h.double()) @ delta.T).item()

    for c in (0, 7, 50):
        want = error(layer.mlp.down_proj.weight, hess[(2, "down")], [c])
        assert sal.mlp[2][c].item() * sizes["mlp"] == pytest.approx(want, rel=1e-3)
    for h in (0, 3):
        want = error(layer.self_attn.o_proj.weight, hess[(2, "o")], list(range(h * hd, (h + 1) * hd)))
        assert sal.heads[2][h].item() * sizes["attention"] == pytest.approx(want, rel=1e-3)
    assert sal.stem.shape == (arch.hidden,) and bool((sal.stem > 0).all())


def test_obc_metric_run_reaches_the_budget():
    cfg = PretrainPruneConfig(target_params=110_000, metric="obc", quantum=0.05, cycle="1:1")
    model, _, log = pretrain_prune(tiny_model("tiny-llama"), tiny_tokenizer(), examples(), cfg, progress=False)
    assert count_params(model) <= 110_000
    assert all(set(e["saliency"]) == {"attention", "mlp", "stem"} for e in log if e["type"] != "train")


def test_killed_run_resumes_to_the_same_model(tmp_path):
    from llmsculpt.run import Interrupted

    cfg = PretrainPruneConfig(target_params=105_000, cycle="2:1", quantum=0.04, continue_steps=2, obs=True)
    kw = dict(checkpoint_every=3, progress=False)
    full, full_plan, full_log = pretrain_prune(tiny_model("tiny-llama"), tiny_tokenizer(), examples(), cfg,
                                               checkpoint_dir=tmp_path / "full", **kw)
    with pytest.raises(Interrupted):  # dies between checkpoints, after some pruning changed the shapes
        pretrain_prune(tiny_model("tiny-llama"), tiny_tokenizer(), examples(), cfg, checkpoint_dir=tmp_path / "cut",
                       stop_after=len(full_log) - 2, **kw)
    resumed, plan, log = pretrain_prune(tiny_model("tiny-llama"), tiny_tokenizer(), examples(), cfg,
                                        checkpoint_dir=tmp_path / "cut", resume=True, **kw)
    assert plan.to_dict() == full_plan.to_dict()
    assert [(e["step"], e["type"], e["params"]) for e in log] == [(e["step"], e["type"], e["params"]) for e in full_log]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(len(full_log)))
    other = PretrainPruneConfig(target_params=105_000, cycle="1:1", quantum=0.04, continue_steps=2, obs=True)
    with pytest.raises(SculptError, match="different settings.*cycle"):
        pretrain_prune(tiny_model("tiny-llama"), tiny_tokenizer(), examples(), other, checkpoint_dir=tmp_path / "cut",
                       resume=True, **kw)


@pytest.mark.parametrize("obs, metric", [(True, "taylor"), (True, "obc"), (False, "fisher")])
def test_plan_step_plans_without_touching_the_model_and_its_plan_replays(tmp_path, obs, metric):
    """plan_step measures and decides only; its plan (OBS updates inside) applied to a copy equals
    the old in-place step: the OBS-compensated weight, then the selection."""
    from llmsculpt.measure import LocalEngine
    from llmsculpt.methods.pruning_aware import plan_step
    from llmsculpt.plan import Plan

    model = tiny_model("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = torch.randint(4, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    share = {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch, "loss_scale": 1.0}
    cfg = PretrainPruneConfig(target_params=110_000, metric=metric, obs=obs, fixed_order=("mlp",))
    plan, entry = plan_step(LocalEngine(), model, share, cfg, quantum=5000.0, prune_done=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.grad is not None for p in model.parameters())
    assert entry["type"] == "mlp" and entry["removed"] > 0 and set(entry) == {"loss", "type", "removed", "saliency"}
    assert bool(plan.updates) == obs and all(u.module == "down_proj" and u.op == "set" for u in plan.updates)
    pruned = apply_plan(copy.deepcopy(model), plan)
    if obs:  # the old path: compensate the whole weight in place, then cut the removed columns
        with torch.no_grad(), input_hessians(model, True) as hess:
            model(input_ids=batch)
        old = copy.deepcopy(model)
        arch = architecture(old)
        for i, layer in enumerate(old.model.layers):
            gone = [c for c in range(arch.layers[i].mlp) if plan.layers[i].mlp is not None and c not in plan.layers[i].mlp]
            with torch.no_grad():
                layer.mlp.down_proj.weight.copy_(obs_remove_columns(layer.mlp.down_proj.weight, hess[(i, "down")], gone))
        apply_plan(old, plan.without_updates())
        assert torch.equal(old(X).logits, pruned(X).logits)
    plan.save(tmp_path / "plan.json")
    assert (tmp_path / "plan.updates.safetensors").is_file() == obs
    replay = apply_plan(copy.deepcopy(model), Plan.load(tmp_path / "plan.json"))
    assert torch.equal(replay(X).logits, pruned(X).logits)
