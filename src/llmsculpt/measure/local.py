"""The local measuring engine: every pass on the model itself, the whole batch in this process.

Only what ``Needs`` names is collected: nothing at all for magnitude, one forward pass without
gradients (under ``torch.inference_mode``) for forward statistics, one forward+backward for the
mean gradient (the whole batch, up to ``grad_tokens`` tokens per backward), one per sample for
per-sample squared gradients.

Memory, what a gradient pass holds at its peak: the weights; no ``.grad`` anywhere — each scored
parameter's gradient is handed on from its post-accumulate hook on the last backward
(measure/streaming.py), reduced to group scores by the planner's ``reducer`` (``Measurements.reduced``)
or kept whole in ``Measurements.grad`` only when no reducer is given (EfficientLLM's saliency, the
tests); the decoder layers' inputs and one layer's recomputed activations (``checkpoint``, on by
default: measure/checkpointing.py); one chunk of vocabulary logits (the loss is computed from the
hidden states in chunks of tokens, :mod:`llmsculpt.eval.chunked_loss`). Gradients exist only on the
scored parameters (``scored_parameters``: the decoder layers' Linear weights and biases, plus the
input embedding for EfficientLLM's saliency; lm_head and norms only for hidden-channel scores).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.importance.fluctuation import InputMoments
from llmsculpt.measure.checkpointing import checkpointed_layers
from llmsculpt.measure.hooks import Replay, activation_sq, input_hessians, layer_io_hooks, output_input_moments
from llmsculpt.measure.needs import Needs
from llmsculpt.measure.streaming import GradStream, Reducer
from llmsculpt.models.spec import get_path, spec_for


@dataclass
class Measurements:
    """What one measuring pass produced; fields that were not asked for stay empty / None."""

    loss: float | None = None
    samples: int = 0
    grad: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> dL/dW (mean loss)
    grad_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> Σ_i g_i²
    act_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # Linear module name -> [in]
    layer: torch.Tensor | None = None  # [n_layers] layer importance (see importance/layer_importance)
    moments: InputMoments | None = None
    hessians: dict | None = None  # {(layer, "o" | "down" | "attn_in" | "mlp_in"): X Xᵀ}
    reduced: dict[str, dict] = field(default_factory=dict)  # reducer key -> {vector key: vector}

    def free_grads(self) -> None:
        """Drop the gradients (once they are scores) before surgery or the next pass."""
        self.grad.clear()
        self.grad_sq.clear()


def scored_parameters(model: nn.Module, which: str = "linear") -> dict[str, nn.Parameter]:
    """The parameters whose gradients are measured: every Linear weight/bias inside the decoder
    layers; with ``which="saliency"`` also the input embedding (EfficientLLM's stem saliency); with
    ``which="hidden"`` the embedding, an untied lm_head and every norm weight too (hidden-channel scores)."""
    spec = spec_for(model)
    prefix = spec.layers + "."
    out = {}
    for mname, mod in model.named_modules():
        if mname.startswith(prefix) and isinstance(mod, nn.Linear):
            for pname, p in mod.named_parameters(recurse=False):
                out[f"{mname}.{pname}"] = p
    if which in ("saliency", "hidden"):
        out[f"{spec.embed}.weight"] = get_path(model, spec.embed).weight
    if which == "hidden":
        names = {id(p): n for n, p in model.named_parameters()}
        norms = [get_path(model, spec.final_norm)] + [getattr(layer, n) for layer in spec.decoder_layers(model)
                                                       for n in spec.layer_norms]
        for p in [get_path(model, spec.lm_head).weight] + [norm.weight for norm in norms]:
            if id(p) in names:  # a tied lm_head is the embedding, already in
                out.setdefault(names[id(p)], p)
    return out


def batch_size(batch) -> int:
    return int((batch["input_ids"] if isinstance(batch, dict) else batch).shape[0])


def split_share(batch: dict, device) -> tuple[dict, float]:
    """A training share {input_ids, attention_mask, labels, loss_scale?} -> (model inputs, scale)."""
    scale = float(batch.get("loss_scale", 1.0))
    return {k: v.to(device) for k, v in batch.items() if k != "loss_scale"}, scale


def deliverer(out: Measurements, reducer: Reducer | None, needs: Needs):
    """Where a complete gradient goes: the reducer's vectors into ``out.reduced``, or whole into
    ``out.grad`` / ``out.grad_sq`` when there is no reducer."""

    def deliver(name, param, grad, grad_sq) -> None:
        if reducer is not None:
            if name in reducer.names:
                for key, vectors in reducer(name, param, grad, grad_sq).items():
                    out.reduced.setdefault(key, {}).update(vectors)
            return
        if needs.grad and grad is not None:
            out.grad[name] = grad
        if needs.grad_sq and grad_sq is not None:
            out.grad_sq[name] = grad_sq

    return deliver


def watch_forward(hooks: ExitStack, model: nn.Module, needs: Needs, out: Measurements, *,
                  replay: Replay | None = None) -> Callable[[], None]:
    """Enter on ``hooks`` the hooks of the forward statistics ``needs`` names (Σx², layer change,
    moments, Hessians; Σx² straight into ``out.act_sq``); returns ``collect()``, which puts the others
    into ``out`` once the passes have run. Shared by every engine that runs forward passes itself."""
    if needs.act:
        hooks.enter_context(activation_sq(model, out.act_sq, replay=replay))
    imp = hooks.enter_context(layer_io_hooks(model, distance=needs.layer_change, replay=replay)) \
        if needs.layer_change else None
    moments = hooks.enter_context(output_input_moments(model, replay=replay)) if needs.moments else None
    hess = hooks.enter_context(input_hessians(model, inputs=needs.hessians == "all", replay=replay)) \
        if needs.hessians else None

    def collect() -> None:
        out.layer = imp.values() if imp is not None else None
        out.moments = moments
        out.hessians = dict(hess) if hess is not None else None

    return collect


GRAD_TOKENS = 1 << 13  # tokens per backward of a mean-gradient pass when the engine chooses


class LocalEngine:
    """Measures on the model itself, in this process; this process decides every plan.

    ``micro_batch``: samples per pass (None: 4 for forward passes; for mean-gradient passes as many
    as fit in ``grad_tokens`` tokens when ``checkpoint`` is on, so the usual calibration batch is
    one backward and needs no gradient accumulator). ``checkpoint``: activation checkpointing of the
    decoder layers in gradient passes."""

    decides = True

    def __init__(self, *, micro_batch: int | None = None, checkpoint: bool = True, grad_tokens: int = GRAD_TOKENS) -> None:
        self.micro_batch, self.checkpoint, self.grad_tokens = micro_batch, checkpoint, grad_tokens

    def _step(self, batch: torch.Tensor, needs: Needs) -> int:
        if needs.grad_sq:
            return 1
        if self.micro_batch is not None:
            return max(1, self.micro_batch)
        if needs.grad and self.checkpoint:
            return max(1, self.grad_tokens // max(1, batch.shape[1]))
        return 4

    def measure(self, model: nn.Module, batch, needs: Needs, *, reducer: Reducer | None = None) -> Measurements:
        """Run ``batch`` (calibration ids [n, seq], or a training share dict) through ``model`` and
        collect what ``needs`` names. ``grad`` is the gradient of the batch's mean loss (a share's
        own loss × its ``loss_scale``); ``grad_sq`` sums per-sample squared gradients (diagonal
        empirical Fisher), which forces micro-batches of one sample. With a ``reducer``
        (importance.groups.GroupReducer) gradients become its vectors in ``Measurements.reduced``
        as they are produced and ``grad``/``grad_sq`` stay empty."""
        out = Measurements(samples=batch_size(batch) if batch is not None else 0)
        if not needs.any:  # magnitude: no pass at all
            return out
        was_training = model.training
        model.eval()
        params = dict(model.named_parameters())
        req = {n: p.requires_grad for n, p in params.items()}
        replay = Replay()
        try:
            with ExitStack() as hooks:
                collect = watch_forward(hooks, model, needs, out, replay=replay)
                hooks.enter_context(checkpointed_layers(model, replay, enabled=self.checkpoint and needs.wants_grad))
                deliver = deliverer(out, reducer, needs)
                if isinstance(batch, dict):
                    out.loss = self._share_pass(model, batch, needs, params, deliver, reducer)
                else:
                    out.loss = self._calibration_passes(model, batch, needs, params, deliver, reducer)
        finally:
            for n, p in params.items():
                p.grad = None
                p.requires_grad_(req[n])
            model.train(was_training)
        collect()
        return out

    def each_layer(self, model: nn.Module, fn: Callable[[int, nn.Module], object]) -> list:
        """``fn(i, layer)`` for every decoder layer (the planners' per-layer work on weights)."""
        return each_layer(model, fn)

    def agree(self, plan):
        return plan

    def applied(self, model: nn.Module) -> None:
        """After a pruning step: the replaced matrices' memory goes back to the system."""
        from llmsculpt.models.residency import trim_heap

        trim_heap()

    # ---- passes ---------------------------------------------------------------------------
    def _calibration_passes(self, model, batch: torch.Tensor, needs: Needs, params, deliver, reducer) -> float:
        from llmsculpt.eval.chunked_loss import causal_lm_loss

        batch = batch.to(next(model.parameters()).device)
        n = batch.shape[0]
        chunks = list(torch.split(batch, self._step(batch, needs)))
        total = 0.0
        if not needs.wants_grad:
            with torch.inference_mode():
                for ids in chunks:
                    total += causal_lm_loss(model, ids).item() * ids.shape[0]
            return total / n
        scored = _grads_on(params, _scored(model, needs, reducer))
        stream = GradStream(scored, deliver, per_sample=needs.grad_sq, mean_grad=needs.grad, samples=n)
        with stream.hooks():
            for k, ids in enumerate(chunks):
                loss = causal_lm_loss(model, ids)
                total += loss.item() * ids.shape[0]
                stream.last = k == len(chunks) - 1
                # per-sample passes take each sample's own gradient (Fisher needs g_i, not g_i/N)
                (loss if needs.grad_sq else loss * ids.shape[0] / n).backward()
            stream.finish()
        return total / n

    def _share_pass(self, model, batch: dict, needs: Needs, params, deliver, reducer) -> float:
        """One pass over a training share: the model's own loss (labels may ignore positions) × scale."""
        if needs.grad_sq:
            raise SculptError("per-sample squared gradients are measured on calibration batches, not training shares")
        inputs, scale = split_share(batch, next(model.parameters()).device)
        if not needs.wants_grad:
            with torch.inference_mode():
                return float((model(**inputs, use_cache=False).loss * scale).item())
        scored = _grads_on(params, _scored(model, needs, reducer))
        stream = GradStream(scored, deliver)
        with stream.hooks():
            loss = model(**inputs, use_cache=False).loss * scale
            stream.last = True
            loss.backward()
            stream.finish()
        return float(loss.item())


def each_layer(model: nn.Module, fn: Callable[[int, nn.Module], object]) -> list:
    """``fn(i, layer)`` for every decoder layer of a resident model, without autograd."""
    with torch.no_grad():
        return [fn(i, layer) for i, layer in enumerate(spec_for(model).decoder_layers(model))]


def _scored(model: nn.Module, needs: Needs, reducer: Reducer | None) -> dict[str, nn.Parameter]:
    """The parameters that get gradients: the scored ones, only those a reducer reads if there is one."""
    scored = scored_parameters(model, needs.grad_params)
    if reducer is None:
        return scored
    return {n: p for n, p in scored.items() if n in reducer.names} or scored


def _grads_on(params: dict[str, nn.Parameter], scored: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """Only ``scored`` parameters require gradients (the caller restores the flags)."""
    ids = {id(p) for p in scored.values()}
    for p in params.values():
        p.requires_grad_(id(p) in ids)
        p.grad = None
    return scored
