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
    progress: bool = True,
):
    """Train and return (model with LoRA merged, log of {step, epoch, loss, lr}).

    Stops with a SculptError, before anything is saved, if the loss stops being finite (train_step).
    """
    from tqdm.auto import tqdm

    if not examples:
        raise SculptError("no training examples")

    if lora:
        model = add_lora(model, r=lora_r, alpha=lora_alpha)
    optimizer = make_optimizer(model, lr)
    per_epoch = math.ceil(len(examples) / batch_size)
    total = per_epoch * epochs
    log, step = [], 0
    with tqdm(total=total, desc="fine-tune", disable=not progress) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            for k in range(per_epoch):
                batch = collate([examples[i] for i in order[k * batch_size : (k + 1) * batch_size]], tokenizer.pad_token_id or 0)
                rate = learning_rate(schedule, step, total, lr=lr, min_lr=min_lr)
                loss = train_step(model, batch, optimizer, rate)
                log.append({"step": step, "epoch": epoch, "loss": loss, "lr": rate})
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
    return merge_lora(model), log
