"""One optimisation step (cross-entropy, optionally distilled from a teacher), and LoRA helpers."""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from llmsculpt.errors import SculptError, require
from llmsculpt.train.mixed import MixedAdamW, needs_master

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: torch's own when they are all fp32, else ``MixedAdamW``
    (fp32 master weights and moments for bf16/fp16 parameters; train/mixed.py). Re-created after
    every pruning: parameters change shape (train/optim_carry.py carries the state when asked)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if any(needs_master(p) for p in params):
        return MixedAdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def distill_loss(student_logits, teacher_logits, labels, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on softened logits at the positions that carry a label, × T²."""
    mask = labels[:, 1:] != -100
    s = student_logits[:, :-1][mask].float() / temperature
    t = teacher_logits[:, :-1][mask].float() / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean") * temperature**2


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    lr: float,
    *,
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    distill_weight: float = 0.5,
    max_grad_norm: float = 1.0,
    loss_scale: float = 1.0,
) -> float:
    """One AdamW step at learning rate ``lr``; returns the (scaled) loss, computed in fp32.

    ``batch`` may be a list of micro-batches (gradient accumulation): each one's loss is weighted by
    its share of the label tokens, so the step equals one step on their concatenation. With a
    ``MixedAdamW`` (bf16/fp16 weights) the gradient norm is clipped in fp32 and the step taken on
    the fp32 masters. ``loss_scale`` multiplies the loss before backward (data-parallel runs use it
    so that DDP's gradient average equals the whole batch's token-mean gradient; see
    run/processes.py).
    """
    device = next(model.parameters()).device
    micro = [batch] if isinstance(batch, dict) else list(batch)
    micro = [{k: v.to(device) for k, v in b.items()} for b in micro]
    tokens = [int((b["labels"][:, 1:] != -100).sum()) for b in micro]
    for group in optimizer.param_groups:
        group["lr"] = lr
    mixed = isinstance(optimizer, MixedAdamW)
    optimizer.zero_grad(set_to_none=True)
    model.train()
    value = 0.0
    for b, n in zip(micro, tokens):
        share = n / max(sum(tokens), 1) if len(micro) > 1 else 1.0
        loss = _loss(model, b, teacher, temperature, distill_weight) * (loss_scale * share)
        (loss * optimizer.loss_scale if mixed else loss).backward()
        value += float(loss.item())
    if mixed:
        norm = optimizer.clip_grad_norm_(max_grad_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    # checked after backward, where data-parallel processes have averaged their gradients: a
    # non-finite loss on any of them makes every process's norm non-finite, so all stop together
    # (an fp16 overflow at the current loss scale is not divergence: that step is skipped)
    if not (math.isfinite(value) and (math.isfinite(float(norm)) or (mixed and optimizer.skipping))):
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        raise SculptError(f"training stopped before saving: the loss became {value:.4g} (gradient norm "
                          f"{float(norm):.4g}) at learning rate {lr:.3g}; training diverged or a batch had no "
                          "label tokens: lower --lr, or check the data")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no stale gradients held (4 bytes/parameter at fp32) until the next step
    model.eval()
    return value


def _loss(model, batch, teacher, temperature: float, distill_weight: float) -> torch.Tensor:
    """The batch's token-mean cross-entropy (transformers computes it on fp32 logits), optionally
    mixed with the distillation loss from ``teacher`` (also in fp32)."""
    out = model(**batch, use_cache=False)
    loss = out.loss.float()
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = (1 - distill_weight) * loss + distill_weight * distill_loss(out.logits, t_logits, batch["labels"], temperature)
    return loss


def add_lora(model: nn.Module, *, r: int = 8, alpha: int = 16, dropout: float = 0.0) -> nn.Module:
    peft = require("peft", extra="lora", feature="LoRA training")
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    cfg._register_custom_module(lora_layers())
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, cfg)


def lora_layers() -> dict[type, type]:
    """peft custom LoRA layers for llmsculpt's own modules, for ``LoraConfig._register_custom_module``
    (``add_lora`` registers them; do the same when calling peft yourself on a pruned model)."""
    from llmsculpt.models.sculpt_modeling import HeadGatherLinear

    return {HeadGatherLinear: _head_gather_lora()}


@functools.cache
def _head_gather_lora() -> type:
    """LoRA on a cluster-attention K/V projection (``HeadGatherLinear``): the delta B·A has the K/V
    weight's shape, so it is added to the projection *before* the heads are gathered — exactly what
    merging it into the weight gives. (peft's ``lora.Linear`` adds it after the gather, where the
    widths differ.) Merge, unmerge and the adapter state dict are peft's, unchanged."""
    from peft.tuners.lora import Linear as LoraLinear

    class HeadGatherLoraLinear(LoraLinear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            self._check_forward_args(x, *args, **kwargs)
            if kwargs.pop("adapter_names", None) is not None or any(a in self.lora_variant for a in self.active_adapters):
                raise NotImplementedError("cluster-attention K/V projections support plain LoRA only "
                                          "(no mixed adapter batches, DoRA or other variants)")
            base = self.get_base_layer()
            if self.disable_adapters and self.merged:
                self.unmerge()
            if self.disable_adapters or self.merged:
                return base(x)
            y = base.project(x)
            dtype = y.dtype
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                a, b = self.lora_A[name], self.lora_B[name]
                delta = b(a(self.lora_dropout[name](self._cast_input_dtype(x, a.weight.dtype))))
                y = y + delta * self.scaling[name]
            return base.gather(y.to(dtype))

    return HeadGatherLoraLinear


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA weights back into the base model (before the next pruning, and before saving)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
