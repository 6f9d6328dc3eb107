"""Next-token cross-entropy from the hidden states, a chunk of tokens at a time.

A causal LM's forward materialises batch × seq × vocabulary logits, and the loss then upcasts them
to fp32 and takes a log-softmax of the same size: for a 152k vocabulary and 4 × 128 tokens that is
~1 GB. Here the decoder runs without its head, and ``lm_head`` + fp32 cross-entropy run on at most
``CHUNK_ELEMENTS`` logits at once; with gradients each chunk is checkpointed, so only one chunk's
logits exist in the backward pass too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmsculpt.models.spec import get_path, spec_for

CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB in fp32


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def nll_sum(model: nn.Module, ids: torch.Tensor, *, chunk_elements: int | None = None) -> torch.Tensor:
    """Σ −log p(ids[:, t+1] | ids[:, :t+1]) over the batch [n, seq], as an fp32 scalar; at most
    ``chunk_elements`` (default ``CHUNK_ELEMENTS``) logits exist at once."""
    spec = spec_for(model)
    base = get_path(model, spec.layers.rsplit(".", 1)[0])
    head = get_path(model, spec.lm_head)
    hidden = base(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    step = max(1, (chunk_elements or CHUNK_ELEMENTS) // head.out_features)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], step):
        h, y = hidden[s : s + step], targets[s : s + step]
        total = total + (checkpoint(_ce_sum, head, h, y, use_reentrant=False) if grad else _ce_sum(head, h, y))
    return total


def causal_lm_loss(model: nn.Module, ids: torch.Tensor, *, chunk_elements: int | None = None) -> torch.Tensor:
    """The mean next-token loss of ``model(input_ids=ids, labels=ids).loss``, computed in chunks."""
    return nll_sum(model, ids, chunk_elements=chunk_elements) / (ids.shape[0] * (ids.shape[1] - 1))
