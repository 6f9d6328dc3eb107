"""The layer-by-layer measuring engine: forward-only statistics with one decoder layer resident.

The model's own forward runs once over the whole calibration batch, but every decoder layer is
wrapped for the pass: the wrapper loads the layer's weights (``residency.load``, see
models/residency.py), runs the layer over the carried hidden states in micro-batches of
``micro_batch`` samples (the same micro-batches as :class:`~llmsculpt.measure.local.LocalEngine`'s
forward passes, so every hook sees the same tensors in the same order and the statistics are bit
for bit the same), and releases the weights before the next layer. What is resident at the peak:
one layer's weights, the hidden states of the batch (twice: the layer's input and output), one
micro-batch's activations inside the layer, and the statistics (vectors per layer).

Only forward statistics can be measured this way (``act``, ``layer_change``, ``moments``,
``hessians``); gradients need the whole model (use LocalEngine or ShardedEngine). The same
residency serves the planners' per-layer work on weights (:meth:`each_layer`) and the layer-by-layer
save (io/layerwise_save.py).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.measure.local import Measurements, batch_size, watch_forward
from llmsculpt.measure.needs import Needs
from llmsculpt.models.residency import resident
from llmsculpt.models.spec import get_path, spec_for

FORWARD_MICRO_BATCH = 4  # samples per layer call, as LocalEngine's forward passes


class _Resident(nn.Module):
    """Decoder layer ``index`` for one pass: loaded on call, run in micro-batches, released."""

    def __init__(self, inner: nn.Module, index: int, residency, step: int) -> None:
        super().__init__()
        self.inner, self.index, self.residency, self.step = inner, index, residency, step

    def __getattr__(self, name: str):  # the family's model reads e.g. ``attention_type`` off the layer
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        with resident(self.residency, self.index) as layer:
            n = hidden_states.shape[0]
            outs = []
            for start in range(0, n, self.step):
                rows = slice(start, start + self.step)
                out = layer(hidden_states[rows], *args, **{k: _rows(v, rows, n) for k, v in kwargs.items()})
                outs.append(out[0] if isinstance(out, (tuple, list)) else out)
            return torch.cat(outs) if len(outs) > 1 else outs[0]


def _rows(value, rows: slice, n: int):
    """A keyword argument restricted to the micro-batch's samples where it has a batch dimension."""
    if torch.is_tensor(value):
        return value[rows] if value.dim() > 0 and value.shape[0] == n and n > 1 else value
    if isinstance(value, tuple):
        return tuple(_rows(v, rows, n) for v in value)
    return value


@contextmanager
def resident_layers(model: nn.Module, residency, step: int) -> Iterator[None]:
    """Every decoder layer of ``model`` wrapped in :class:`_Resident` inside the block."""
    spec = spec_for(model)
    parent_path, attr = spec.layers.rsplit(".", 1)
    parent = get_path(model, parent_path)
    layers = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList(_Resident(layer, i, residency, step) for i, layer in enumerate(layers)))
    try:
        yield
    finally:
        setattr(parent, attr, layers)


class LayerwiseEngine:
    """Measures forward statistics one decoder layer at a time (see the module docstring)."""

    decides = True
    layer_by_layer = True

    def __init__(self, residency, *, micro_batch: int | None = None) -> None:
        self.residency = residency
        self.micro_batch = micro_batch or FORWARD_MICRO_BATCH

    def measure(self, model: nn.Module, batch: torch.Tensor, needs: Needs, *, reducer=None) -> Measurements:
        if needs.wants_grad:
            raise SculptError("layer-by-layer measuring runs forward passes only; gradient metrics (taylor, fisher) "
                              "need the whole model: drop --layer-by-layer or choose magnitude, wanda-sp, flap "
                              "or shortgpt")
        if isinstance(batch, dict):
            raise SculptError("layer-by-layer measuring takes calibration ids, not training shares")
        out = Measurements(samples=batch_size(batch))
        if not needs.any:
            return out
        spec = spec_for(model)
        base = get_path(model, spec.layers.rsplit(".", 1)[0])
        device = get_path(model, spec.embed).weight.device
        with ExitStack() as hooks, torch.inference_mode():
            collect = watch_forward(hooks, model, needs, out)
            hooks.enter_context(resident_layers(model, self.residency, self.micro_batch))
            base(input_ids=batch.to(device), use_cache=False)
        collect()
        return out

    def each_layer(self, model: nn.Module, fn: Callable[[int, nn.Module], object]) -> list:
        """``fn(i, layer)`` for every decoder layer, each with its weights resident for the call."""
        out = []
        for i in range(len(spec_for(model).decoder_layers(model))):
            with resident(self.residency, i) as layer, torch.no_grad():
                out.append(fn(i, layer))
        return out

    def group_scores(self, model: nn.Module, measured: Measurements, metric, *, aggregation: str = "sum",
                     hidden: bool = False):
        """importance.groups.score_groups, one resident layer at a time (no hidden channels: their
        scores couple every layer)."""
        from llmsculpt.importance.groups import GroupScores, Scorer, layer_scores
        from llmsculpt.structures.shapes import architecture

        if hidden:
            raise SculptError("hidden-channel pruning couples every layer; it does not run layer by layer")
        arch, spec = architecture(model), spec_for(model)
        layers = self.each_layer(model, lambda i, layer: layer_scores(Scorer(model, measured, metric), spec, layer,
                                                                      arch.layers[i], arch.head_dim, aggregation))
        return GroupScores(layers=layers)

    def agree(self, plan):
        return plan

    def applied(self, model: nn.Module) -> None:
        pass

