"""The fp32 invariants again in bfloat16 (issue 16), over the same methods and tiny families: ratio 0
is a no-op; pruned ≡ masked and the plan's parameter count for hand-made plans and the plans of
every method; save → load (ours and plain transformers) and the vLLM / GGUF exports; same seed →
same plan; layer by layer ≡ whole model; the pruning-aware plan replay and cluster attention.

Models are bf16 by ``place(model, dtype=torch.bfloat16)``, which keeps the rotary tables fp32 as
loading does. Two tolerances, each test says which and why:
- **exact** (``torch.equal``) where the same kernels run on the same bf16 weights (save → load, an
  export loaded back, a plan replayed, a second run with the same seed, layer by layer), or where the
  only difference is zero rows/columns (padded heads): zeros add nothing to the fp32 accumulators;
- **CLOSE = 2 % of the logits' range** (max − min) where two models compute the same function in a
  different order: hidden-channel surgery folds its RMSNorm rescale into bf16 weights, masking
  multiplies zeros in instead. bf16 keeps 8 significant bits, so one rounding of a logit near its
  largest value is 0.4–0.8 % of the range of these tiny models' logits; observed ≤ 0.75 %.
Kill + resume ≡ uninterrupted in bf16 is tests/test_train.py (``test_bf16_*``: accel full, LoRA,
carried moments, pretrain-prune); the sharded bf16 run is tests/test_distributed.py.
"""

import copy
import functools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import llmsculpt
from llmsculpt.io.save import save_pruned
from llmsculpt.models.placement import place
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model, tiny_tokenizer
from llmsculpt.testing.masking import mask_plan

from _files import weight_dtypes
from _plans import mixed_plan, save_load_plan, second_plan
from conftest import FAMILIES

BF16 = torch.bfloat16
CLOSE = 0.02
X = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
CALIB = "The pruned model keeps its most important heads and channels. " * 60
SAMPLE_AWARE = {"samples": [0, 2], "pool_size": 3, "pool_seed": 0, "alpha1": 0.4, "alpha2": 0.7,
                "lambda1": 1.5, "lambda2": 0.01, "calib_text": CALIB}
METHODS = {  # every method that plans, hidden channels too where the method can prune them
    "uniform": dict(hidden=True), "magnitude": dict(hidden=True), "wanda-sp": dict(hidden=True), "flap": {},
    "shortgpt": dict(ratio=0.2), "adaptive": dict(hidden=True, options={"steps": 2}),
    "sample_aware": dict(options=SAMPLE_AWARE)}
CHEAP = ("uniform", "magnitude", "wanda-sp", "flap", "shortgpt")
# The default run (≈ 55 s of test time on 2 cores shared at load 6; small bf16 matmuls cost ~0.1 ms
# each on this CPU, 3–12× fp32's) takes every method and family at least once; the full breadth is slow.
DEFAULT = {"magnitude": FAMILIES, "flap": ["tiny-llama-tied", "tiny-qwen2"], "uniform": ["tiny-qwen3"],
           "wanda-sp": ["tiny-mistral"], "shortgpt": ["tiny-qwen3"], "adaptive": ["tiny-llama"],
           "sample_aware": ["tiny-qwen2"]}


def params(every, default):
    """``every`` case as a pytest param, marked slow unless it is in ``default``."""
    return [pytest.param(*c, marks=() if c in default else pytest.mark.slow) for c in every]


ALL = params([(m, f) for m in METHODS for f in FAMILIES], {(m, f) for m, fs in DEFAULT.items() for f in fs})
ONE_FAMILY_EACH = params([(m, DEFAULT[m][-1]) for m in METHODS], {(m, DEFAULT[m][-1]) for m in METHODS})


def bf16_model(family="tiny-llama", **overrides):
    return place(tiny_model(family, rms_norm_eps=1e-12, **overrides), dtype=BF16)


def logits(model, ids=X):
    with torch.no_grad():
        return model(ids).logits


def assert_close(out, ref, frac=CLOSE):
    assert out.dtype == ref.dtype == BF16
    out, ref = out.float(), ref.float()
    err, span = (out - ref).abs().max().item(), (ref.max() - ref.min()).item()
    assert err <= frac * span, f"max |Δ| {err:.4g} > {frac:.0%} of the logits' range {span:.4g}"


def plan_of(method, family, seed=0):
    """The bf16 plan ``method`` makes for ``family`` (a dry run: the model is not touched)."""
    model = bf16_model(family)
    kw = {"ratio": 0.3, **METHODS[method]}
    out = llmsculpt.prune(model, tokenizer=tiny_tokenizer(), calib_text=CALIB, seed=seed, n_samples=2, seq_len=16,
                          dry_run=True, method=method, **kw)
    assert next(model.parameters()).dtype == BF16
    return out.plan


@functools.cache
def planned(method, family):
    return plan_of(method, family)


def masked(model, plan):
    """The dense reference: the plan's updates (FLAP's bias compensation) applied, then its removals zeroed."""
    dense = copy.deepcopy(model)
    if plan.updates:
        keep = Plan.keep_all(architecture(dense))
        keep.updates = plan.updates
        apply_plan(dense, keep)
    return mask_plan(dense, plan.without_updates())


# ---- surgery ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_an_exact_noop_in_bf16(family):
    """Exact: nothing is selected away, so every bf16 weight and the logits stay bit for bit."""
    model = bf16_model(family)
    before, ref = copy.deepcopy(model.state_dict()), logits(model)
    plan = Plan.keep_all(architecture(model))
    assert plan.is_noop(architecture(model))
    apply_plan(model, plan)
    assert torch.equal(logits(model), ref)
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype for k, v in model.state_dict().items())


@pytest.mark.parametrize("family,hidden", params([(f, h) for f in FAMILIES for h in (True, False)],
                                                {(f, True) for f in FAMILIES} | {("tiny-llama", False)}))
def test_hand_plan_pruned_equals_masked_in_bf16(family, hidden):
    """Within CLOSE (hidden channels: surgery rescales the norms in bf16, masking does not); the
    parameter count and architecture are the plan's, exactly, and every weight stays bf16."""
    model = bf16_model(family)
    plan = mixed_plan(architecture(model), hidden=hidden)
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert {p.dtype for p in pruned.parameters()} == {BF16}
    assert architecture(pruned) == plan.resulting(architecture(model))
    assert count_params(pruned) == plan.resulting(architecture(model)).param_count()
    assert_close(logits(pruned), logits(mask_plan(copy.deepcopy(model), plan)))


@pytest.mark.parametrize("method,family", ALL)
def test_method_plans_pruned_equal_masked_in_bf16(method, family):
    """Every method's plan of a bf16 model: removes something, counts exactly, and the pruned model
    gives the masked dense model's logits within CLOSE (observed ≤ 0.75 % with hidden channels,
    exact without)."""
    model, plan = bf16_model(family), copy.deepcopy(planned(method, family))
    arch = architecture(model)
    assert not plan.is_noop(arch) and (plan.hidden is not None) == METHODS[method].get("hidden", False)
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert {p.dtype for p in pruned.parameters()} == {BF16}
    assert count_params(pruned) == plan.resulting(arch).param_count() < count_params(model)
    assert_close(logits(pruned), logits(masked(model, plan)))


@pytest.mark.parametrize("family,twice", params([(f, t) for f in FAMILIES for t in (False, True)],
                                              {("tiny-llama", False), ("tiny-qwen2", True)}))
def test_plan_composition_in_bf16(family, twice):
    """Two plans one after the other ≡ their composition applied once. Exact when only the second
    plan prunes hidden channels (one RMSNorm rescale, the same factor, either way); within CLOSE when
    both do (the rescale is rounded to bf16 twice one way, once the other; observed ≤ 0.67 %)."""
    model = bf16_model(family)
    first = mixed_plan(architecture(model), hidden=twice)
    step = apply_plan(copy.deepcopy(model), first)
    second = second_plan(architecture(step), hidden=40)
    apply_plan(step, second)
    once = apply_plan(copy.deepcopy(model), first.compose(second))
    assert architecture(once) == architecture(step)
    if twice:
        assert_close(logits(once), logits(step))
    else:
        assert torch.equal(logits(once), logits(step))


# ---- same seed, same plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("method,family", ONE_FAMILY_EACH)
def test_same_seed_same_plan_in_bf16(method, family):
    """Exact: the same bf16 computation twice gives the same scores, hence the same plan, and the
    same update values (FLAP's bf16 bias compensation) bit for bit."""
    again, first = plan_of(method, family), planned(method, family)
    assert again.to_dict() == first.to_dict()
    assert len(again.updates) == len(first.updates) and all(
        torch.equal(a.value, b.value) for a, b in zip(again.updates, first.updates))


@pytest.mark.parametrize("method", CHEAP)
def test_bf16_plans_are_close_to_fp32_plans(method):
    """Not an identity: bf16 rounding reorders near-tied scores. On tiny-qwen3 (the family whose
    plans move most) ≥ 95 % of the kept heads / channels / layers are fp32's (Jaccard; observed ≥ 98.6 %)."""
    def kept(plan):
        units = {("hidden", i) for i in plan.hidden or []}
        for lp in plan.to_dict()["layers"]:
            units |= {(lp["index"], "drop")} if lp.get("drop") else {
                (lp["index"], k, i) for k in ("heads", "mlp") for i in lp.get(k) or []}
        return units

    fp32 = llmsculpt.prune(tiny_model("tiny-qwen3", rms_norm_eps=1e-12), tokenizer=tiny_tokenizer(), calib_text=CALIB,
                           seed=0, n_samples=2, seq_len=16, dry_run=True, method=method,
                           **{"ratio": 0.3, **METHODS[method]}).plan
    a, b = kept(planned(method, "tiny-qwen3")), kept(fp32)
    assert len(a & b) >= 0.95 * len(a | b)


GRAD_METRICS = ("taylor", "taylor_vector", "fisher", "taylor_mix")


@pytest.mark.parametrize("hidden,metrics", params([(True, ("taylor",)), (True, GRAD_METRICS[1:]), (False, GRAD_METRICS)],
                                                   {(True, ("taylor",))}))
def test_streamed_scores_equal_whole_gradient_scores_in_bf16(hidden, metrics):
    """Exact: one backward gives the same bf16 gradients either way, and both paths reduce W·g to
    group scores in fp32 the same way (the scores are fp32, not bf16)."""
    from llmsculpt.importance import get_metric
    from llmsculpt.importance.groups import GroupReducer, score_groups
    from llmsculpt.measure import LocalEngine
    from llmsculpt.methods.oneshot import needs_for

    model, batch = bf16_model("tiny-qwen2"), torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    for name in metrics:
        metric = get_metric(name)
        needs = needs_for(metric, hidden=hidden)
        whole = score_groups(model, LocalEngine().measure(model, batch, needs), metric, hidden=hidden)
        streamed = score_groups(model, LocalEngine().measure(model, batch, needs, reducer=GroupReducer(
            model, [metric], hidden=hidden)), metric, hidden=hidden)
        assert (whole.hidden is not None) == hidden and (not hidden or torch.equal(whole.hidden, streamed.hidden))
        for a, b in zip(whole.layers, streamed.layers):
            assert a.mlp.dtype == torch.float32 and all(torch.equal(u, v) for u, v in (
                (a.heads, b.heads), (a.kv, b.kv), (a.mlp, b.mlp))), name


# ---- save → load, exports ------------------------------------------------------------------------------


def assert_reloads_exactly(model, out, *, remote):
    """``out`` holds BF16 weights and says so; ours and plain transformers load the same logits and
    greedy generations, bit for bit."""
    assert weight_dtypes(out) == {"BF16"} and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    want = logits(model)
    ours = llmsculpt.load(out, dtype="auto", device="cpu").model
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote).eval()
    for loaded in (ours, plain):
        assert {p.dtype for p in loaded.parameters()} == {BF16}
        assert architecture(loaded) == architecture(model) and torch.equal(logits(loaded), want)
    gen = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(plain.generate(X[:1, :4], **gen), model.generate(X[:1, :4], **gen))


@pytest.mark.parametrize("family,heterogeneous", params([(f, h) for f in FAMILIES for h in (False, True)],
                                                       {("tiny-qwen3", False)}))
def test_save_load_round_trip_is_exact_in_bf16(tmp_path, family, heterogeneous):
    """Exact (same bf16 weights, same kernels): uniform with hidden channels and fewer heads, or per
    layer with cluster attention, a dropped layer and a narrower MLP (our config class, remote code)."""
    model = bf16_model(family)
    plan = save_load_plan(architecture(model), heterogeneous)
    apply_plan(model, plan)
    save_pruned(model, tiny_tokenizer(), tmp_path / "out", plan=plan)
    assert Plan.load(tmp_path / "out" / "plan.json").to_dict() == plan.to_dict()
    assert_reloads_exactly(model, tmp_path / "out", remote=heterogeneous)


@pytest.mark.parametrize("method,family", params([(m, DEFAULT[m][-1]) for m in METHODS],
                                                 {("flap", "tiny-qwen2"), ("adaptive", "tiny-llama")}))
def test_method_pruned_models_reload_exactly_in_bf16(tmp_path, method, family):
    """Exact: each method's bf16 pruned model (FLAP's bf16 output biases, ShortGPT's dropped layers,
    hidden channels, per-layer widths) saved and loaded back."""
    model = apply_plan(bf16_model(family), copy.deepcopy(planned(method, family)))
    save_pruned(model, tiny_tokenizer(), tmp_path / "out")
    assert_reloads_exactly(model, tmp_path / "out", remote=not architecture(model).is_uniform or method == "flap")


VLLM = [(f, False, False) for f in FAMILIES if f != "tiny-llama-tied"] + [  # the family route, then Nemotron-NAS
    (f, True, False) for f in FAMILIES if f != "tiny-qwen3"] + [("tiny-llama", False, True), ("tiny-qwen2", True, True)]


@pytest.mark.parametrize("family,per_layer,bias", params(VLLM, {("tiny-llama", False, False), ("tiny-qwen2", True, True)}))
def test_vllm_export_round_trips_exactly_in_bf16(tmp_path, family, per_layer, bias):
    """Exact: the family route writes the same weights for the same model class; the Nemotron-NAS
    route only adds zero-padded heads (zeros add nothing to the fp32 accumulators). Loaded by plain
    transformers (remote code) and by llmsculpt.load (padding undone)."""
    from llmsculpt.io.export_vllm import export_vllm

    from test_export_vllm import PROMPT, vllm_case

    model, tok = vllm_case(family, per_layer, bias=bias)
    place(model, dtype=BF16)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = export_vllm(model, tok, tmp_path / "served")
    assert weight_dtypes(out) == {"BF16"} and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ours = llmsculpt.load(out, dtype="auto", device="cpu").model
    assert architecture(ours) == architecture(model)
    for loaded in (plain, ours):
        assert next(loaded.parameters()).dtype == BF16 and torch.equal(logits(loaded, ids), logits(model, ids))


GGUF = [(f, False) for f in FAMILIES] + [("tiny-llama", True), ("tiny-mistral", True)]  # test_export_gguf's cases


@pytest.mark.parametrize("family,heterogeneous", params(GGUF, {("tiny-llama", True), ("tiny-qwen3", False)}))
def test_gguf_export_of_a_bf16_model(tmp_path, family, heterogeneous):
    """An f32 GGUF of a bf16 model holds its bf16 weights upcast exactly; llama.cpp runs them in fp32 and
    matches torch's fp32 run of the same weights to 1e-3 of the largest logit (test_export_gguf.py's
    fp32 tolerance; observed < 1e-5), and the bf16 model itself within CLOSE (observed ≤ 0.5 %)."""
    pytest.importorskip("llama_cpp")
    from llmsculpt.io.export_gguf import export_gguf

    from test_export_gguf import PROMPT, _llama_logits, _model

    model, tok = _model(family, heterogeneous)
    place(model, dtype=BF16)
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    want = logits(model, torch.tensor([ids]))[0]
    upcast = logits(copy.deepcopy(model).float(), torch.tensor([ids]))[0]
    theirs = torch.tensor(_llama_logits(export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32"), ids))
    assert (theirs - upcast).abs().max() < 1e-3 * upcast.abs().max()
    assert_close(theirs.to(BF16), want)


# ---- layer by layer, pruning-aware ---------------------------------------------------------------------

@pytest.mark.parametrize("family,method", params([(f, m) for m in ("flap", "wanda-sp", "magnitude", "shortgpt")
                                                  for f in FAMILIES], {("tiny-llama", "flap")}))
def test_layer_by_layer_equals_whole_model_in_bf16(tmp_path, family, method):
    """Exact: a bf16 checkpoint streamed one layer at a time runs the same bf16 kernels on the same
    layer inputs as the whole model: the same plan, parameter count and perplexity before, the same
    saved BF16 weights (logits bit for bit); perplexity after to rel 1e-6 as in fp32 (summed in another order)."""
    src = tmp_path / "src"
    bf16_model(family).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    kw = dict(method=method, ratio=0.3, calib_text=CALIB, eval_text=CALIB, eval_windows=2, dtype="auto",
              n_samples=2, seq_len=16)
    whole = llmsculpt.prune(str(src), out=tmp_path / "whole", **kw)
    layered = llmsculpt.prune(str(src), out=tmp_path / "layered", layer_by_layer=True, **kw)
    assert layered.plan.to_dict() == whole.plan.to_dict() and not whole.plan.is_noop(architecture(bf16_model(family)))
    assert layered.report["params_after"] == whole.report["params_after"]
    assert layered.report["ppl_before"] == whole.report["ppl_before"]
    assert layered.report["ppl_after"] == pytest.approx(whole.report["ppl_after"], rel=1e-6)
    assert weight_dtypes(tmp_path / "layered") == weight_dtypes(tmp_path / "whole") == {"BF16"}
    a, b = (llmsculpt.load(tmp_path / d, dtype="auto").model for d in ("layered", "whole"))
    assert next(a.parameters()).dtype == BF16 and torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("obs,metric", params([(True, "taylor"), (True, "obc"), (False, "fisher")], {(True, "taylor")}))
def test_pruning_aware_plan_replays_exactly_in_bf16(tmp_path, obs, metric):
    """Exact: plan_step on a bf16 model leaves it untouched; its plan equals the old in-place step (OBS
    compensation of the bf16 weight from the same fp32 Hessian, then the cut), and saved → loaded →
    applied (OBS weight updates in the sidecar) gives the same bf16 weights, hence the same logits."""
    from llmsculpt.config import PretrainPruneConfig
    from llmsculpt.importance.obs import obs_remove_columns
    from llmsculpt.measure import LocalEngine
    from llmsculpt.measure.hooks import input_hessians
    from llmsculpt.methods.pruning_aware import plan_step

    model = bf16_model("tiny-llama")
    before = copy.deepcopy(model.state_dict())
    batch = torch.randint(4, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    share = {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch, "loss_scale": 1.0}
    cfg = PretrainPruneConfig(target_params=110_000, metric=metric, obs=obs, fixed_order=("mlp",))
    plan, entry = plan_step(LocalEngine(), model, share, cfg, quantum=5000.0, prune_done=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert entry["removed"] > 0 and bool(plan.updates) == obs
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert {p.dtype for p in pruned.parameters()} == {BF16}
    if obs:
        with torch.no_grad(), input_hessians(model, True) as hess:
            model(input_ids=batch)
        old = copy.deepcopy(model)
        for i, layer in enumerate(old.model.layers):
            w, kept = layer.mlp.down_proj.weight, plan.layers[i].mlp
            gone = [c for c in range(w.shape[1]) if kept is not None and c not in kept]
            with torch.no_grad():
                w.copy_(obs_remove_columns(w, hess[(i, "down")], gone))
        assert torch.equal(logits(apply_plan(old, plan.without_updates())), logits(pruned))
    plan.save(tmp_path / "plan.json")
    replay = apply_plan(copy.deepcopy(model), Plan.load(tmp_path / "plan.json"))
    assert all(torch.equal(a, b) for a, b in zip(replay.state_dict().values(), pruned.state_dict().values()))
    assert torch.equal(logits(replay), logits(pruned))


@pytest.mark.slow
def test_cluster_attention_saves_reloads_and_generates_in_bf16(tmp_path):
    """Exact: pretrain-prune's uneven query heads per K/V head, on a bf16 model, saved and reloaded."""
    from llmsculpt.config import PretrainPruneConfig
    from llmsculpt.run import pretrain_prune

    from _runs import token_blocks

    cfg = PretrainPruneConfig(target_params=125_000, fixed_order=("attention",), cycle="1:0", quantum=0.03)
    model, plan, _ = pretrain_prune(bf16_model("tiny-llama"), tiny_tokenizer(), token_blocks(), cfg, progress=False)
    assert any(not ls.is_grouped_evenly for ls in architecture(model).layers)
    save_pruned(model, tiny_tokenizer(), tmp_path / "m", plan=plan)
    assert_reloads_exactly(model, tmp_path / "m", remote=True)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["accel", "pretrain-prune"])
def test_same_seed_same_plan_for_training_runs_in_bf16(tmp_path, run):
    """Exact: a bf16 Adapt-Accel / pretrain-prune run twice gives the same plan and the same weights
    (kill + resume ≡ uninterrupted is tests/test_train.py's test_bf16_*)."""
    from _runs import accel_case, pretrain_case

    def go(name):
        if run == "accel":
            from llmsculpt.run import run_accel

            model, tok, examples, cfg = accel_case(tmp_path / "t.txt")
            return run_accel(place(model, dtype=BF16), tok, examples, cfg, checkpoint_dir=tmp_path / name,
                             progress=False)
        from llmsculpt.run import pretrain_prune

        model, tok, examples, cfg = pretrain_case()
        return pretrain_prune(place(model, dtype=BF16), tok, examples, cfg, progress=False)

    (a, plan_a, log_a), (b, plan_b, log_b) = go("one"), go("two")
    assert plan_a.to_dict() == plan_b.to_dict() and not plan_a.is_noop(architecture(bf16_model()))
    assert [e.get("loss") for e in log_a] == [e.get("loss") for e in log_b]
    assert {p.dtype for p in a.parameters()} == {BF16}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
