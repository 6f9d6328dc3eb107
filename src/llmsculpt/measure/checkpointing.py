"""Activation checkpointing of the decoder layers for the engine's gradient passes.

transformers checkpoints only in ``training`` mode, and the measuring passes run in ``eval()``; so
the engine installs, for the duration of a gradient pass, an instance-level ``forward`` on every
decoder layer that runs the layer's own forward under ``torch.utils.checkpoint`` (non-reentrant).
The backward pass then keeps only each layer's input, and recomputes one layer at a time: the
activations of a whole calibration batch cost ``n × seq × hidden`` per layer plus one layer's
recomputation, which is what lets a mean-gradient pass run as a single backward.

The recomputation runs inside ``replay.running()``, so the hooks (which take the same
:class:`~llmsculpt.measure.hooks.Replay`) count each forward once; the layer's own forward hooks
do not see it at all (the checkpoint calls the layer's forward, not the module). The recomputed
forward is the same arithmetic, so results are unchanged (bit for bit at fp32 on the CPU).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmsculpt.measure.hooks import Replay
from llmsculpt.models.spec import spec_for


def _checkpointed(forward, replay: Replay):
    contexts = lambda: (nullcontext(), replay.running())  # noqa: E731  (first forward, recomputation)

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    return run


@contextmanager
def checkpointed_layers(model: nn.Module, replay: Replay, *, enabled: bool = True) -> Iterator[None]:
    """Every decoder layer of ``model`` checkpointed inside the block (nothing when not ``enabled``);
    the layers' own ``forward`` is restored on exit, whatever happens."""
    layers = spec_for(model).decoder_layers(model) if enabled else []
    saved = [layer.__dict__.get("forward") for layer in layers]
    try:
        for layer in layers:
            layer.forward = _checkpointed(layer.forward, replay)
        yield
    finally:
        for layer, own in zip(layers, saved):
            if own is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = own
