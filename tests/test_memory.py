"""Memory of the measuring passes: gradients only on scored parameters, reduced to group scores as
they are produced (no .grad during or after a pass), checkpointed decoder layers, loss in chunks of
tokens, forward-only passes under inference mode, and scores equal to the whole-gradient
computation the passes replaced (fp32: exactly where the arithmetic is the same, else tolerances
stated)."""

import torch

from llmsculpt.eval.chunked_loss import causal_lm_loss
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.importance import get_metric
from llmsculpt.measure import LocalEngine, Measurements, Needs
from llmsculpt.measure.local import scored_parameters
from llmsculpt.importance.groups import score_groups
from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.testing import tiny_model, tiny_tokenizer

BATCH = torch.randint(4, 128, (6, 24), generator=torch.Generator().manual_seed(1))


def collect_stats(model, batch, needs: Needs) -> Measurements:
    return LocalEngine().measure(model, batch, needs)


def _reference_grad(model, batch, micro=4) -> Measurements:
    """What the measuring pass did before: every parameter's gradient of the HF loss, cloned."""
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for ids in torch.split(batch, micro):
        (model(input_ids=ids, labels=ids, use_cache=False).loss * ids.shape[0] / batch.shape[0]).backward()
    stats = Measurements(grad={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    return stats


def test_chunked_loss_equals_hf_loss_and_gradient():
    """Several chunks (chunk_elements forces 5 tokens per chunk): loss to 1e-6, gradients to 1e-6."""
    model = tiny_model("tiny-qwen2")
    ids = BATCH[:2]
    ref = model(input_ids=ids, labels=ids, use_cache=False).loss
    ref.backward()
    ref_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    got = causal_lm_loss(model, ids, chunk_elements=5 * model.config.vocab_size)
    got.backward()
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grad[n], atol=1e-6), n


def test_gradients_only_on_scored_parameters_and_scores_unchanged():
    """Taylor scores from the new pass equal the old full-gradient ones at fp32 (rtol 1e-4, atol
    1e-7: same maths, other summation order in the loss), and the parameters come back as they were."""
    model = tiny_model("tiny-llama")
    metric = get_metric("taylor")
    ref = score_groups(model, _reference_grad(model, BATCH), metric)
    for p in model.parameters():
        p.requires_grad_(False)
    stats = collect_stats(model, BATCH, Needs(grad=True))
    assert set(stats.grad) == set(scored_parameters(model))
    embed = get_path(model, spec_for(model).embed).weight
    assert embed.grad is None and not embed.requires_grad
    assert all(p.grad is None for p in model.parameters())
    got = score_groups(model, stats, metric)
    for a, b in zip(got.layers, ref.layers):
        for x, y in ((a.heads, b.heads), (a.kv, b.kv), (a.mlp, b.mlp)):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-7)
            assert torch.equal(x.argsort(), y.argsort())


def test_no_full_vocabulary_logits_and_forward_passes_in_inference_mode():
    model, tok = tiny_model("tiny-mistral"), tiny_tokenizer()
    seen = []
    head = get_path(model, spec_for(model).lm_head)
    h = head.register_forward_hook(lambda m, a, out: seen.append((out.shape, torch.is_inference_mode_enabled())))
    try:
        import llmsculpt.eval.chunked_loss as cl

        old, cl.CHUNK_ELEMENTS = cl.CHUNK_ELEMENTS, 7 * model.config.vocab_size
        try:
            collect_stats(model, BATCH, Needs(act=True))
            ppl = perplexity(model, tok, "abcdefghij" * 30, seq_len=20, batch_size=4)
            collect_stats(model, BATCH, Needs(grad=True))
        finally:
            cl.CHUNK_ELEMENTS = old
    finally:
        h.remove()
    assert ppl.windows > 0 and seen
    assert all(shape[0] <= 7 for shape, _ in seen)  # never more than one chunk of token logits
    forward_only = [inf for (_, inf) in seen[: len(seen) // 2]]
    assert all(forward_only)  # the activation pass and the perplexity ran under inference_mode


def test_bf16_scores_close_to_fp32_ranking():
    """bf16 weights, fp32 accumulation: scores within 5 % of fp32's (relative to their largest)."""
    model = tiny_model("tiny-qwen3")
    metric = get_metric("taylor")
    ref = score_groups(model, collect_stats(model, BATCH, Needs(grad=True)), metric)
    model.to(torch.bfloat16)
    got = score_groups(model, collect_stats(model, BATCH, Needs(grad=True)), metric)
    for a, b in zip(got.layers, ref.layers):
        assert a.mlp.dtype == torch.float32
        assert (a.mlp - b.mlp).abs().max() <= 0.05 * b.mlp.abs().max()


# ---- gradients reduced as they are produced; checkpointed decoder layers (issue 16) ------------

from llmsculpt.importance.groups import GroupReducer  # noqa: E402

GRAD_METRICS = ("taylor", "taylor_vector", "fisher", "taylor_mix")


def _equal_scores(a, b) -> None:
    for x, y in zip(a.layers, b.layers):
        for u, v in ((x.heads, y.heads), (x.kv, y.kv), (x.mlp, y.mlp)):
            assert torch.equal(u, v)


def _old_pass_scores(model, batch, metric, micro=4):
    """The measuring pass before streaming: .grad accumulated by autograd over micro-batches of 4
    (per sample for Fisher), no checkpointing, the same chunked loss; then scored from whole grads."""
    scored = scored_parameters(model)
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in scored.values()))
    n, stats = batch.shape[0], Measurements()
    if "grad_sq" in metric.needs:
        for ids in torch.split(batch, 1):
            causal_lm_loss(model, ids).backward()
            for name, p in scored.items():
                g = p.grad.detach()
                stats.grad_sq[name] = stats.grad_sq[name] + g.pow(2) if name in stats.grad_sq else g.pow(2).clone()
                stats.grad[name] = stats.grad[name] + g if name in stats.grad else g.clone()
                p.grad = None
        stats.grad = {k: g / n for k, g in stats.grad.items()}
    else:
        for ids in torch.split(batch, micro):
            (causal_lm_loss(model, ids) * ids.shape[0] / n).backward()
        stats.grad = {k: p.grad.detach() for k, p in scored.items()}
    got = score_groups(model, stats, metric)
    model.zero_grad(set_to_none=True)
    return got


def test_streamed_scores_equal_the_whole_gradient_scores_exactly():
    """fp32: every gradient metric's scores, reduced while the backward runs (one backward or
    several micro-batches), equal the old whole-.grad pass's bit for bit."""
    for family in ("tiny-llama", "tiny-qwen2"):
        model = tiny_model(family)
        for name in GRAD_METRICS:
            metric = get_metric(name)
            ref = _old_pass_scores(model, BATCH, metric)
            for engine in (LocalEngine(micro_batch=4), LocalEngine(micro_batch=4, checkpoint=False), LocalEngine()):
                stats = engine.measure(model, BATCH, Needs.for_metric(metric), reducer=GroupReducer(model, [metric]))
                assert not stats.grad and not stats.grad_sq and stats.reduced[metric.name]
                _equal_scores(score_groups(model, stats, metric), ref if engine.micro_batch or "grad_sq" in metric.needs
                              else score_groups(model, LocalEngine().measure(model, BATCH, Needs.for_metric(metric)), metric))


def test_no_whole_model_gradient_during_or_after_a_pass():
    """When a parameter's gradient is handed on, no parameter holds a .grad; none does afterwards."""
    model = tiny_model("tiny-qwen2")
    metric = get_metric("taylor_mix")
    reducer = GroupReducer(model, [metric])
    held = []

    def watching(name, param, grad, grad_sq):
        held.append(sum(p.grad is not None for p in model.parameters()))
        return GroupReducer.__call__(reducer, name, param, grad, grad_sq)

    watcher = type("Watch", (), {"names": reducer.names, "__call__": staticmethod(watching)})()
    LocalEngine(micro_batch=2).measure(model, BATCH, Needs(grad=True, grad_sq=True, layer_change="cosine"), reducer=watcher)
    assert held and max(held) == 0
    assert all(p.grad is None for p in model.parameters())
    assert not any("forward" in layer.__dict__ for layer in spec_for(model).decoder_layers(model))  # wrappers removed


def test_checkpointed_pass_gives_the_same_statistics_and_scores():
    """Checkpointing the decoder layers changes nothing at fp32: the recomputed forward is not
    counted again by the hooks (layer importance, Σx², moments, Hessians) and gradients are equal."""
    model = tiny_model("tiny-llama")
    needs = Needs(grad=True, act=True, moments=True, layer_change="cosine", hessians="outputs")
    runs = [LocalEngine(micro_batch=3, checkpoint=c).measure(model, BATCH, needs) for c in (False, True)]
    plain, ckpt = runs
    assert torch.equal(plain.layer, ckpt.layer) and plain.loss == ckpt.loss
    for store in ("act_sq", "grad"):
        a, b = getattr(plain, store), getattr(ckpt, store)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(plain.hessians[k], ckpt.hessians[k]) for k in plain.hessians)
    for x, y in zip(plain.moments.attn + plain.moments.mlp, ckpt.moments.attn + ckpt.moments.mlp):
        assert torch.equal(x.total, y.total) and torch.equal(x.total_sq, y.total_sq) and x.count == y.count
