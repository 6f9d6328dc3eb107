"""The local measuring engine: every pass on the model itself, the whole batch in this process.

Only what ``Needs`` names is collected: nothing at all for magnitude, one forward pass without
gradients (under ``torch.inference_mode``) for forward statistics, one forward+backward per
micro-batch for gradients, one per sample for per-sample squared gradients.

Memory: gradients exist only on the scored parameters (``scored_parameters``: the decoder layers'
Linear weights and biases, plus the input embedding for EfficientLLM's saliency; lm_head and norms
never get one), ``Measurements.grad`` holds those ``.grad`` tensors themselves (no copy), and a
calibration batch's loss is computed from the hidden states in chunks of tokens
(:mod:`llmsculpt.eval.chunked_loss`), never as batch × seq × vocabulary fp32 logits.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.importance.fluctuation import InputMoments
from llmsculpt.measure.hooks import activation_sq, input_hessians, layer_io_hooks, output_input_moments
from llmsculpt.measure.needs import Needs
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

    def free_grads(self) -> None:
        """Drop the gradients (once they are scores) before surgery or the next pass."""
        self.grad.clear()
        self.grad_sq.clear()


def scored_parameters(model: nn.Module, which: str = "linear") -> dict[str, nn.Parameter]:
    """The parameters whose gradients are measured: every Linear weight/bias inside the decoder
    layers; with ``which="saliency"`` also the input embedding (EfficientLLM's stem saliency)."""
    spec = spec_for(model)
    prefix = spec.layers + "."
    out = {}
    for mname, mod in model.named_modules():
        if mname.startswith(prefix) and isinstance(mod, nn.Linear):
            for pname, p in mod.named_parameters(recurse=False):
                out[f"{mname}.{pname}"] = p
    if which == "saliency":
        out[f"{spec.embed}.weight"] = get_path(model, spec.embed).weight
    return out


def batch_size(batch) -> int:
    return int((batch["input_ids"] if isinstance(batch, dict) else batch).shape[0])


def split_share(batch: dict, device) -> tuple[dict, float]:
    """A training share {input_ids, attention_mask, labels, loss_scale?} -> (model inputs, scale)."""
    scale = float(batch.get("loss_scale", 1.0))
    return {k: v.to(device) for k, v in batch.items() if k != "loss_scale"}, scale


class LocalEngine:
    """Measures on the model itself, in this process; this process decides every plan."""

    decides = True

    def __init__(self, *, micro_batch: int = 4) -> None:
        self.micro_batch = micro_batch

    def measure(self, model: nn.Module, batch, needs: Needs) -> Measurements:
        """Run ``batch`` (calibration ids [n, seq], or a training share dict) through ``model`` and
        collect what ``needs`` names. ``grad`` is the gradient of the batch's mean loss (a share's
        own loss × its ``loss_scale``); ``grad_sq`` sums per-sample squared gradients (diagonal
        empirical Fisher), which forces micro-batches of one sample."""
        out = Measurements(samples=batch_size(batch) if batch is not None else 0)
        if not needs.any:  # magnitude: no pass at all
            return out
        was_training = model.training
        model.eval()
        params = dict(model.named_parameters())
        req = {n: p.requires_grad for n, p in params.items()}
        try:
            with ExitStack() as hooks:
                if needs.act:
                    hooks.enter_context(activation_sq(model, out.act_sq))
                imp = hooks.enter_context(layer_io_hooks(model, distance=needs.layer_change)) if needs.layer_change else None
                moments = hooks.enter_context(output_input_moments(model)) if needs.moments else None
                hess = (hooks.enter_context(input_hessians(model, inputs=needs.hessians == "all"))
                        if needs.hessians else None)
                if isinstance(batch, dict):
                    out.loss = self._share_pass(model, batch, needs, params, out)
                else:
                    out.loss = self._calibration_passes(model, batch, needs, params, out)
        finally:
            for n, p in params.items():
                p.grad = None
                p.requires_grad_(req[n])
            model.train(was_training)
        out.layer = imp.values() if imp is not None else None
        out.moments = moments
        out.hessians = dict(hess) if hess is not None else None
        return out

    def agree(self, plan):
        return plan

    def applied(self, model: nn.Module) -> None:
        pass

    # ---- passes ---------------------------------------------------------------------------
    def _calibration_passes(self, model, batch: torch.Tensor, needs: Needs, params, out: Measurements) -> float:
        from llmsculpt.eval.chunked_loss import causal_lm_loss

        batch = batch.to(next(model.parameters()).device)
        n = batch.shape[0]
        step = 1 if needs.grad_sq else max(1, self.micro_batch)
        chunks = list(torch.split(batch, step))
        total = 0.0
        if not needs.wants_grad:
            with torch.inference_mode():
                for ids in chunks:
                    total += causal_lm_loss(model, ids).item() * ids.shape[0]
            return total / n
        scored = _grads_on(params, scored_parameters(model, needs.grad_params))
        for ids in chunks:
            loss = causal_lm_loss(model, ids)
            total += loss.item() * ids.shape[0]
            # per-sample passes take each sample's own gradient (Fisher needs g_i, not g_i/N)
            (loss if needs.grad_sq else loss * ids.shape[0] / n).backward()
            if needs.grad_sq:
                _accumulate_per_sample(scored, out, keep_grad=needs.grad)
        if needs.grad_sq:
            out.grad = {k: g / n for k, g in out.grad.items()}
        elif needs.grad:  # the .grad tensors themselves: released from the parameters by the caller
            out.grad = {k: p.grad.detach() for k, p in scored.items() if p.grad is not None}
        return total / n

    def _share_pass(self, model, batch: dict, needs: Needs, params, out: Measurements) -> float:
        """One pass over a training share: the model's own loss (labels may ignore positions) × scale."""
        if needs.grad_sq:
            raise SculptError("per-sample squared gradients are measured on calibration batches, not training shares")
        inputs, scale = split_share(batch, next(model.parameters()).device)
        if not needs.wants_grad:
            with torch.inference_mode():
                return float((model(**inputs, use_cache=False).loss * scale).item())
        scored = _grads_on(params, scored_parameters(model, needs.grad_params))
        loss = model(**inputs, use_cache=False).loss * scale
        loss.backward()
        out.grad = {k: p.grad.detach() for k, p in scored.items() if p.grad is not None}
        return float(loss.item())


def _grads_on(params: dict[str, nn.Parameter], scored: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """Only ``scored`` parameters require gradients (the caller restores the flags)."""
    ids = {id(p) for p in scored.values()}
    for p in params.values():
        p.requires_grad_(id(p) in ids)
        p.grad = None
    return scored


def _accumulate_per_sample(params: dict[str, nn.Parameter], out: Measurements, *, keep_grad: bool) -> None:
    """After one single-sample backward: add its squared gradient, then clear .grad."""
    for name, p in params.items():
        if p.grad is None:
            continue
        g = p.grad.detach()
        if name in out.grad_sq:
            out.grad_sq[name] += g.pow(2)
        else:
            out.grad_sq[name] = g.pow(2).clone()
        if keep_grad:
            out.grad[name] = out.grad[name] + g if name in out.grad else g.clone()
        p.grad = None
