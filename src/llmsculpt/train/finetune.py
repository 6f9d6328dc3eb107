"""Plain recovery fine-tuning of a (pruned) model: full or LoRA (merged at the end), any data format,
one schedule over all epochs. Used after `sculpt search` + `sculpt prune` (AdaPruner's LoRA step)."""

from __future__ import annotations

import math

import torch

from llmsculpt.errors import SculptError
from llmsculpt.train.data import Example, collate
from llmsculpt.train.schedule import learning_rate
from llmsculpt.train.trainer import add_lora, make_optimizer, merge_lora, train_step


def finetune(
    model,
    tokenizer,
    examples: list[Example],
    *,
    epochs: int = 2,
    batch_size: int = 4,
    lr: float = 1e-4,
    min_lr: float = 1e-5,
    schedule: str = "cosine",
    lora: bool = True,
    lora_r: int = 8,
    lora_alpha: int = 16,
    seed: int = 0,
    grad_accum: int = 1,
    gradient_checkpointing: bool = False,
    progress: bool = True,
):
    """Train and return (model with LoRA merged, log of {step, epoch, loss, lr}).

    Each optimisation step takes ``batch_size × grad_accum`` examples, run as ``grad_accum``
    micro-batches of ``batch_size`` whose gradients add up to the whole step's (train_step weighs
    them by label tokens), so only one micro-batch of activations is held at a time.
    ``gradient_checkpointing`` recomputes each decoder layer's activations in the backward pass
    instead of keeping them (on while training, off again afterwards). bf16/fp16 weights train with
    fp32 master weights and moments (train/mixed.py); LoRA adapters are fp32 over such a base.
    Stops with a SculptError, before anything is saved, if the loss stops being finite (train_step).
    """
    from tqdm.auto import tqdm

    if not examples:
        raise SculptError("no training examples")
    if grad_accum < 1 or batch_size < 1:
        raise SculptError(f"batch_size and grad_accum must be at least 1, got {batch_size} and {grad_accum}")

    if lora:
        model = add_lora(model, r=lora_r, alpha=lora_alpha)
    optimizer = make_optimizer(model, lr)
    per_step = batch_size * grad_accum
    per_epoch = math.ceil(len(examples) / per_step)
    total = per_epoch * epochs
    log, step = [], 0
    pad = tokenizer.pad_token_id or 0
    if gradient_checkpointing:
        _checkpointing(model, True)
    try:
        with tqdm(total=total, desc="fine-tune", disable=not progress) as bar:
            for epoch in range(epochs):
                order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
                for k in range(per_epoch):
                    picked = order[k * per_step : (k + 1) * per_step]
                    micro = [collate([examples[i] for i in picked[j : j + batch_size]], pad)
                             for j in range(0, len(picked), batch_size)]
                    rate = learning_rate(schedule, step, total, lr=lr, min_lr=min_lr)
                    loss = train_step(model, micro[0] if len(micro) == 1 else micro, optimizer, rate)
                    log.append({"step": step, "epoch": epoch, "loss": loss, "lr": rate})
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
    finally:
        if gradient_checkpointing:
            _checkpointing(model, False)
    return merge_lora(model), log


def _checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing of the decoder layers on or off. Non-reentrant: works with
    frozen embeddings (LoRA) without making the inputs require gradients. transformers ≥ 5 names it
    ``activation_checkpointing_*``, older versions ``gradient_checkpointing_*``."""
    new = hasattr(model, "activation_checkpointing_enable")
    if not on:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
    elif new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
