"""Physically remove the structures a Plan drops: new, smaller tensors, not masks.

Coupled tensors move together: a query head takes its q_proj rows (and bias) and o_proj columns;
a K/V head its k/v rows (and biases); an MLP channel its gate/up rows and down column; a hidden
channel its embedding column, every norm entry, the input columns of q/k/v/gate/up, the output rows
of o/down and the lm_head column (tied embeddings stay tied).

Then the plan's weight updates (FLAP's bias compensation, OBS) are applied to the result, giving
o_proj / down_proj a bias first where an update needs one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.models.sculpt_modeling import HeadGatherLinear, add_output_biases
from llmsculpt.models.spec import ArchSpec, get_path, spec_for
from llmsculpt.plan import LayerPlan, Plan
from llmsculpt.structures.shapes import LayerShape, architecture, layer_shape
from llmsculpt.surgery.config import sync_config


def _index(sel: list[int], device) -> torch.Tensor:
    return torch.as_tensor(sorted(sel), dtype=torch.long, device=device)


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone(), requires_grad=like.requires_grad)


def slice_linear(lin: nn.Linear, *, rows=None, cols=None, cls=nn.Linear, **extra) -> nn.Linear:
    """A new Linear holding ``lin``'s weight restricted to ``rows`` (outputs) and ``cols`` (inputs)."""
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        idx = _index(rows, w.device)
        w = w.index_select(0, idx)
        b = b.index_select(0, idx) if b is not None else None
    if cols is not None:
        w = w.index_select(1, _index(cols, w.device))
    new = cls(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype, **extra)
    new.weight = _param(w, lin.weight)
    if b is not None:
        new.bias = _param(b, lin.bias)
    return new


def _head_rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in sorted(heads) for i in range(head_dim)]


def _prune_attention(spec: ArchSpec, layer: nn.Module, lp: LayerPlan, shape: LayerShape, hd: int) -> None:
    if lp.heads is None and lp.kv_heads is None:
        return
    attn = spec.attention(layer)
    heads = sorted(lp.heads) if lp.heads is not None else list(range(shape.n_heads))
    kvs = sorted(lp.kv_heads) if lp.kv_heads is not None else list(range(shape.n_kv))
    remap = {j: i for i, j in enumerate(kvs)}
    kv_map = [remap[shape.kv_map[h]] for h in heads]
    new_shape = LayerShape(len(heads), len(kvs), shape.mlp, tuple(kv_map))
    q, k, v, o = spec.qkvo(layer)
    q_rows, kv_rows = _head_rows(heads, hd), _head_rows(kvs, hd)
    setattr(attn, spec.q, slice_linear(q, rows=q_rows))
    setattr(attn, spec.o, slice_linear(o, cols=q_rows))
    if new_shape.is_grouped_evenly:
        setattr(attn, spec.k, slice_linear(k, rows=kv_rows))
        setattr(attn, spec.v, slice_linear(v, rows=kv_rows))
        attn.num_key_value_groups = len(heads) // len(kvs)
    else:  # cluster attention: K/V heads serve uneven numbers of query heads
        kw = {"cls": HeadGatherLinear, "head_dim": hd, "kv_map": kv_map}
        setattr(attn, spec.k, slice_linear(k, rows=kv_rows, **kw))
        setattr(attn, spec.v, slice_linear(v, rows=kv_rows, **kw))
        attn.num_key_value_groups = 1


def _prune_mlp(spec: ArchSpec, layer: nn.Module, lp: LayerPlan) -> None:
    if lp.mlp is None:
        return
    mlp = spec.mlp_module(layer)
    gate, up, down = spec.gate_up_down(layer)
    setattr(mlp, spec.gate, slice_linear(gate, rows=lp.mlp))
    setattr(mlp, spec.up, slice_linear(up, rows=lp.mlp))
    setattr(mlp, spec.down, slice_linear(down, cols=lp.mlp))


def _relinear(owner: nn.Module, name: str, **kw) -> None:
    lin = getattr(owner, name)
    extra = {"cls": HeadGatherLinear, "head_dim": lin.head_dim, "kv_map": lin.kv_map} if isinstance(
        lin, HeadGatherLinear
    ) else {}
    setattr(owner, name, slice_linear(lin, **kw, **extra))


def _prune_norm(norm: nn.Module, keep: list[int], scale: float) -> None:
    keep = _index(keep, norm.weight.device)  # each tensor's own device (run/shards.py mixes meta and real)
    norm.weight = _param(norm.weight.data.index_select(0, keep) * scale, norm.weight)
    if getattr(norm, "bias", None) is not None:
        norm.bias = _param(norm.bias.data.index_select(0, keep), norm.bias)


def _prune_hidden(spec: ArchSpec, model: nn.Module, keep: list[int], rms_rescale: bool) -> None:
    embed = get_path(model, spec.embed)
    lm_head = get_path(model, spec.lm_head)
    tied = lm_head.weight is embed.weight
    old = embed.weight.shape[1]
    # RMSNorm divides by sqrt(mean(x^2)) over the hidden channels: with d' < d channels the same
    # energy is averaged over fewer terms. Scaling the norm weights by sqrt(d/d') keeps outputs exact
    # when the removed channels carry no energy, and close when they carry little.
    scale = math.sqrt(old / len(keep)) if rms_rescale else 1.0
    embed.weight = _param(embed.weight.data.index_select(1, _index(keep, embed.weight.device)), embed.weight)
    embed.embedding_dim = len(keep)
    if tied:
        lm_head.weight = embed.weight
        lm_head.in_features = len(keep)
    else:
        set_owner, name = spec.lm_head.rsplit(".", 1) if "." in spec.lm_head else ("", spec.lm_head)
        owner = get_path(model, set_owner) if set_owner else model
        setattr(owner, name, slice_linear(lm_head, cols=keep))
    _prune_norm(get_path(model, spec.final_norm), keep, scale)
    for layer in spec.decoder_layers(model):
        for norm_name in spec.layer_norms:
            _prune_norm(getattr(layer, norm_name), keep, scale)
        attn, mlp = spec.attention(layer), spec.mlp_module(layer)
        for name in (spec.q, spec.k, spec.v):
            _relinear(attn, name, cols=keep)
        _relinear(attn, spec.o, rows=keep)
        for name in (spec.gate, spec.up):
            _relinear(mlp, name, cols=keep)
        _relinear(mlp, spec.down, rows=keep)


def _drop_layers(spec: ArchSpec, model: nn.Module, plan: Plan) -> None:
    layers = spec.decoder_layers(model)
    kept = [layer for layer, lp in zip(layers, plan.layers) if not lp.drop]
    for new_idx, layer in enumerate(kept):
        spec.attention(layer).layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    parent_path, name = spec.layers.rsplit(".", 1)
    setattr(get_path(model, parent_path), name, nn.ModuleList(kept))
    types = getattr(model.config, "layer_types", None)
    if types:
        model.config.layer_types = [t for t, lp in zip(types, plan.layers) if not lp.drop]


@torch.no_grad()
def apply_plan(model: nn.Module, plan: Plan, *, rms_rescale: bool = True) -> nn.Module:
    """Apply ``plan`` to ``model`` in place (and return it), then rewrite ``model.config``.

    Example:
        >>> from llmsculpt.testing import tiny_model
        >>> from llmsculpt.structures import architecture
        >>> m = tiny_model("tiny-llama")
        >>> p = Plan.keep_all(architecture(m)); p.layers[0].mlp = list(range(48))
        >>> apply_plan(m, p).model.layers[0].mlp.down_proj.in_features
        48
    """
    spec = spec_for(model)
    arch = architecture(model)
    plan.validate(arch)
    layers = spec.decoder_layers(model)
    for layer, lp in zip(layers, plan.layers):
        if lp.drop:
            continue
        _prune_attention(spec, layer, lp, layer_shape(spec, layer, arch.head_dim), arch.head_dim)
        _prune_mlp(spec, layer, lp)
    if plan.hidden is not None and len(plan.hidden) != arch.hidden:
        _prune_hidden(spec, model, plan.hidden, rms_rescale)
    if any(lp.drop for lp in plan.layers):
        _drop_layers(spec, model, plan)
    if plan.updates:
        _apply_updates(spec, model, plan)
    sync_config(model)
    return model


def _apply_updates(spec: ArchSpec, model: nn.Module, plan: Plan) -> None:
    """Set / add every update's value on the pruned model's o_proj / down_proj (see plan.Update)."""
    bias = {m for m in ("o_proj", "down_proj") if any(u.param == "bias" and u.module == m for u in plan.updates)}
    if bias:
        add_output_biases(model, o_proj="o_proj" in bias, down_proj="down_proj" in bias)
    position = {lp.index: k for k, lp in enumerate(lp for lp in plan.layers if not lp.drop)}
    layers = spec.decoder_layers(model)
    for u in plan.updates:
        if u.layer not in position:
            raise SculptError(f"plan updates layer {u.layer}, which the plan removes")
        update_layer(spec, layers[position[u.layer]], [u])


def update_layer(spec: ArchSpec, layer: nn.Module, updates: list) -> None:
    """Apply ``updates`` (all of this layer's) to a pruned decoder layer, giving o_proj / down_proj
    the bias an update needs if it has none yet."""
    for u in updates:
        if u.value is None:
            raise SculptError(f"plan update of layer {u.layer} {u.module}.{u.param} has no value (plan read without "
                              "its .updates.safetensors file?)")
        owner, name = (spec.attention(layer), spec.o) if u.module == "o_proj" else (spec.mlp_module(layer), spec.down)
        lin = getattr(owner, name)
        if u.param == "bias" and lin.bias is None:
            new = nn.Linear(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight = lin.weight
            new.bias.data.zero_()
            setattr(owner, name, lin := new)
        param = getattr(lin, u.param)
        if tuple(param.shape) != tuple(u.value.shape):
            raise SculptError(f"plan update of layer {u.layer} {u.module}.{u.param} has shape {tuple(u.value.shape)}, "
                              f"the pruned model's is {tuple(param.shape)}")
        value = u.value.to(device=param.device, dtype=param.dtype)
        param.copy_(value) if u.op == "set" else param.add_(value)


@torch.no_grad()
def prune_layer(spec: ArchSpec, layer: nn.Module, lp: LayerPlan, head_dim: int, updates: list = ()) -> nn.Module:
    """One decoder layer's part of a plan, in place: its heads and MLP channels, then its updates
    (the layer-by-layer save prunes one resident layer at a time this way; hidden channels and
    dropped layers are whole-model changes and are not handled here)."""
    _prune_attention(spec, layer, lp, layer_shape(spec, layer, head_dim), head_dim)
    _prune_mlp(spec, layer, lp)
    update_layer(spec, layer, list(updates))
    return layer
