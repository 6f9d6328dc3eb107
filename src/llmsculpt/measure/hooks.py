"""Every hook llmsculpt registers, each in a context manager that always removes it.

- ``activation_sq``: Σ x_j² over tokens of the input of every Linear in the decoder layers (Wanda);
- ``layer_io_hooks``: how much each decoder layer changes its input (Adapt-Pruner, ShortGPT);
- ``output_input_moments``: per-channel mean/variance of o_proj and down_proj inputs (FLAP);
- ``input_hessians``: X Xᵀ of o_proj/down_proj inputs, optionally of q_proj's and gate_proj's
  (EfficientLLM's OBS update and OBC saliency).

They only observe the forward passes run inside the block; the engines (local.py, sharded.py)
decide which passes run. The reductions happen as the data flows: nothing keeps activations.
A checkpointed decoder layer (measure/checkpointing.py) runs its forward a second time in the
backward pass; every hook takes the pass's :class:`Replay` and ignores that recomputation.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from llmsculpt.importance.fluctuation import InputMoments, Moments
from llmsculpt.importance.layer_importance import LayerImportance
from llmsculpt.models.spec import spec_for


def _removed(handles: list) -> None:
    for h in handles:
        h.remove()


class Replay:
    """Set while a checkpointed layer recomputes its forward in the backward pass, so that hooks
    count every forward once."""

    def __init__(self) -> None:
        self.depth = 0

    @property
    def active(self) -> bool:
        return self.depth > 0

    @contextmanager
    def running(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


def _replaying(replay: Replay | None) -> bool:
    return replay is not None and replay.active


@contextmanager
def activation_sq(model: nn.Module, store: dict[str, torch.Tensor], *,
                  replay: Replay | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Accumulate Σ x_j² over tokens for the input of every Linear inside the decoder layers, into
    ``store`` (Linear module name -> [in_features])."""
    prefix = spec_for(model).layers
    handles = []

    def make(name: str):
        def hook(_mod, args):
            if _replaying(replay):
                return
            x = args[0].detach()
            sq = x.float().pow(2).reshape(-1, x.shape[-1]).sum(0)
            store[name] = store[name] + sq if name in store else sq

        return hook

    try:
        for name, mod in model.named_modules():
            if name.startswith(prefix) and isinstance(mod, nn.Linear):
                handles.append(mod.register_forward_pre_hook(make(name)))
        yield store
    finally:
        _removed(handles)


@contextmanager
def layer_io_hooks(model: nn.Module, *, distance: str = "cosine",
                   replay: Replay | None = None) -> Iterator[LayerImportance]:
    """Measure layer importance during whatever forward passes run inside the block."""
    layers = spec_for(model).decoder_layers(model)
    acc = LayerImportance(len(layers), distance)
    handles = []

    def make(i: int):
        def hook(_mod, args, kwargs, output):
            if _replaying(replay):
                return
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, (tuple, list)) else output
            acc.add(i, x_in, x_out)

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(make(i), with_kwargs=True))
        yield acc
    finally:
        _removed(handles)


@contextmanager
def output_input_moments(model: nn.Module, *, replay: Replay | None = None) -> Iterator[InputMoments]:
    """Collect per-channel moments of o_proj / down_proj inputs during the forward passes inside."""
    spec = spec_for(model)
    out = InputMoments()
    handles = []

    def make(store: Moments):
        def hook(_mod, args):
            if _replaying(replay):
                return
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            store.total += x.sum(0).cpu().double()
            store.total_sq += x.pow(2).sum(0).cpu().double()
            store.count += x.shape[0]

        return hook

    try:
        for layer in spec.decoder_layers(model):
            _, _, _, o = spec.qkvo(layer)
            _, _, down = spec.gate_up_down(layer)
            for lin, lst in ((o, out.attn), (down, out.mlp)):
                m = Moments(torch.zeros(lin.in_features, dtype=torch.float64), torch.zeros(lin.in_features, dtype=torch.float64))
                lst.append(m)
                handles.append(lin.register_forward_pre_hook(make(m)))
        yield out
    finally:
        _removed(handles)


@contextmanager
def input_hessians(model: nn.Module, enabled: bool = True, *, inputs: bool = False,
                   replay: Replay | None = None) -> Iterator[dict]:
    """H = Σ x xᵀ (float64, on the host) of every o_proj and down_proj input during the forward
    passes inside, keyed (layer, "o" | "down"); with ``inputs`` also of the attention and MLP
    inputs (q_proj's and gate_proj's), keyed (layer, "attn_in" | "mlp_in")."""
    spec = spec_for(model)
    store: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def make(key):
        def hook(_m, args):
            if _replaying(replay):
                return
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            store[key] = store.get(key, 0) + (x.T @ x).cpu()

        return hook

    try:
        if enabled:
            for i, layer in enumerate(spec.decoder_layers(model)):
                q, _, _, o = spec.qkvo(layer)
                gate, _, down = spec.gate_up_down(layer)
                watched = [(o, "o"), (down, "down")] + ([(q, "attn_in"), (gate, "mlp_in")] if inputs else [])
                handles += [module.register_forward_pre_hook(make((i, name))) for module, name in watched]
        yield store
    finally:
        _removed(handles)
