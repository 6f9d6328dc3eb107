"""Perplexity on any text: non-overlapping windows of ``seq_len`` tokens, batched, token count reported.

Forward only, under ``torch.inference_mode``; the loss is taken a chunk of tokens at a time
(:mod:`llmsculpt.eval.chunked_loss`), so no batch × seq × vocabulary fp32 logits exist."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmsculpt.errors import SculptError
from llmsculpt.eval.chunked_loss import nll_sum


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token
    tokens: int  # tokens predicted
    windows: int
    seq_len: int


def _max_context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def perplexity(
    model,
    tokenizer,
    text: str | list[str],
    *,
    seq_len: int = 128,
    batch_size: int = 8,
    max_windows: int | None = None,
    nll=None,
) -> PerplexityResult:
    """exp(mean NLL) over the text cut into non-overlapping ``seq_len`` windows (each window
    predicts its last ``seq_len - 1`` tokens). ``max_windows`` keeps the first N windows. ``nll(model,
    batch)`` sums a batch's negative log-likelihood instead of :func:`nll_sum` (a sharded model runs
    through its own forward: ``llmsculpt.api._sharded``), under ``no_grad`` rather than ``inference_mode``.

    Example:
        >>> from llmsculpt.testing import tiny_model, tiny_tokenizer
        >>> perplexity(tiny_model(), tiny_tokenizer(), "some text " * 40, seq_len=16).windows
        25
    """
    limit = _max_context(model)
    if seq_len < 2:
        raise SculptError(f"seq-len must be at least 2, got {seq_len}")
    if limit is not None and seq_len > limit:
        raise SculptError(f"seq-len {seq_len} is beyond the model's context of {limit} tokens")
    if isinstance(text, list):
        text = "\n\n".join(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise SculptError(f"text too short for perplexity: {len(ids)} tokens, need at least {seq_len}")
    device = next(model.parameters()).device
    windows = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    was_training = model.training
    model.eval()
    total = 0.0
    # a sharded model's gathered parameters must not become inference tensors: no_grad for it
    try:
        with torch.inference_mode() if nll is None else torch.no_grad():
            for batch in windows.split(batch_size):
                total += (nll or nll_sum)(model, batch.to(device)).item()
    finally:
        model.train(was_training)
    count = n * (seq_len - 1)
    mean = total / count
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=count, windows=n, seq_len=seq_len)
