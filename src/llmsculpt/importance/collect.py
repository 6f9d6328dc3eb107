"""Collect the statistics metrics declare: gradients, per-sample squared gradients, activations.

Hooks live in a context manager that always removes them. Only what is needed is collected:
magnitude needs no pass at all, Wanda one forward pass without gradients (under
``torch.inference_mode``), Taylor one forward+backward per micro-batch, Fisher one per sample.

Memory: gradients exist only on the scored parameters (the decoder layers' Linear weights and
biases; embeddings, lm_head and norms never get one), ``Stats.grad`` holds those ``.grad`` tensors
themselves (no copy), and the loss is computed from the hidden states in chunks of tokens
(:mod:`llmsculpt.eval.chunked_loss`), never as batch × seq × vocabulary fp32 logits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from llmsculpt.importance.base import ACT, GRAD, GRAD_SQ
from llmsculpt.models.spec import spec_for


@dataclass
class Stats:
    grad: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    act_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # Linear module name -> [in]
    loss: float | None = None
    samples: int = 0


@contextmanager
def activation_hooks(model: nn.Module, store: dict[str, torch.Tensor]) -> Iterator[None]:
    """Accumulate Σ x_j² over tokens for the input of every Linear inside the decoder layers."""
    spec = spec_for(model)
    handles = []
    prefix = spec.layers

    def make(name: str):
        def hook(_mod, args):
            x = args[0].detach()
            sq = x.float().pow(2).reshape(-1, x.shape[-1]).sum(0)
            store[name] = store[name] + sq if name in store else sq

        return hook

    try:
        for name, mod in model.named_modules():
            if name.startswith(prefix) and isinstance(mod, nn.Linear):
                handles.append(mod.register_forward_pre_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def _loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    from llmsculpt.eval.chunked_loss import causal_lm_loss

    return causal_lm_loss(model, ids)


def scored_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters whose gradients are scored: every Linear weight/bias inside the decoder layers."""
    prefix = spec_for(model).layers + "."
    out = {}
    for mname, mod in model.named_modules():
        if mname.startswith(prefix) and isinstance(mod, nn.Linear):
            for pname, p in mod.named_parameters(recurse=False):
                out[f"{mname}.{pname}"] = p
    return out


def collect_stats(
    model: nn.Module, batch: torch.Tensor, needs: frozenset[str] | set[str], *, micro_batch: int = 4
) -> Stats:
    """Run the calibration ``batch`` [n, seq] through ``model`` and gather what ``needs`` names.

    ``grad`` is the gradient of the mean loss over the batch; ``grad_sq`` sums per-sample squared
    gradients (diagonal empirical Fisher), which forces micro-batches of one sample.
    """
    stats = Stats(samples=int(batch.shape[0]))
    if not needs:  # pass {"forward"} to run a forward pass anyway (e.g. for layer hooks)
        return stats
    device = next(model.parameters()).device
    batch = batch.to(device)
    was_training = model.training
    model.eval()
    params = dict(model.named_parameters())
    scored = scored_parameters(model)
    want_grad = bool(needs & {GRAD, GRAD_SQ})
    step = 1 if GRAD_SQ in needs else max(1, micro_batch)
    chunks = list(torch.split(batch, step))
    total = 0.0
    req = {n: p.requires_grad for n, p in params.items()}
    try:
        ctx = activation_hooks(model, stats.act_sq) if ACT in needs else _null()
        with ctx:
            if not want_grad:
                with torch.inference_mode():
                    for ids in chunks:
                        total += _loss(model, ids).item() * ids.shape[0]
            else:
                for n, p in params.items():
                    p.requires_grad_(n in scored)
                    p.grad = None
                per_sample = GRAD_SQ in needs
                for ids in chunks:
                    loss = _loss(model, ids)
                    total += loss.item() * ids.shape[0]
                    # per-sample passes take each sample's own gradient (Fisher needs g_i, not g_i/N)
                    (loss if per_sample else loss * ids.shape[0] / batch.shape[0]).backward()
                    if per_sample:
                        _accumulate_per_sample(scored, stats, keep_grad=GRAD in needs)
                if per_sample:
                    stats.grad = {n: g / batch.shape[0] for n, g in stats.grad.items()}
                elif GRAD in needs:  # the .grad tensors themselves: released from the parameters below
                    stats.grad = {n: p.grad.detach() for n, p in scored.items() if p.grad is not None}
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(req[n])
        model.train(was_training)
    stats.loss = total / batch.shape[0]
    return stats


def _accumulate_per_sample(params: dict[str, nn.Parameter], stats: Stats, *, keep_grad: bool) -> None:
    """After one single-sample backward: add its squared gradient, then clear .grad."""
    for name, p in params.items():
        if p.grad is None:
            continue
        g = p.grad.detach()
        if name in stats.grad_sq:
            stats.grad_sq[name] += g.pow(2)
        else:
            stats.grad_sq[name] = g.pow(2).clone()
        if keep_grad:
            stats.grad[name] = stats.grad[name] + g if name in stats.grad else g.clone()
        p.grad = None


@contextmanager
def _null() -> Iterator[None]:
    yield
