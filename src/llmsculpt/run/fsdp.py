"""Fully sharded training (PyTorch FSDP2, ``fully_shard``) of a model that is pruned between phases.

Training memory (weights, gradients, AdamW moments) is split over the processes: each holds 1/N of
every parameter. Pruning, however, needs whole matrices, so a run keeps two views of the model:

- the *plain* model: an ordinary ``nn.Module``. On the main process it holds full weights on the
  host (CPU) and is brought up to date (``gather_weights``) only when it is needed: before a
  pruning and before a checkpoint. On the other processes it lives on the ``meta`` device — shapes
  without storage — so they never hold a full copy of the weights after the start (none at all when
  the run starts from, or resumes, a checkpoint directory: api/_common.py, run/checkpoint.py).
- the *sharded* copy (``shard``): built from the plain model after every pruning, its shards filled
  from the main process's weights (broadcast), and trained.

Measuring passes run on the sharded copy too (measure/sharded.py, with ``gather_grads`` and
``gather_weights`` from here): every process takes a slice of the batch, and only whole gradients
are gathered — into the main process's host copy, where scores are computed and the plan decided.

Optimiser state crosses the same boundary as an ordinary ``torch.optim.AdamW.state_dict()`` with
full-size moments, indexed like ``make_optimizer(plain_model)``'s parameters: the format the
checkpoints already use, so a checkpoint written by a sharded run resumes in one process and the
other way round, and ``optimizer_state="carry"`` works on it unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn


def broadcast_object(obj):
    """The main process's ``obj`` (picklable) on every process of the default group (collective)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def to_meta(model: nn.Module) -> None:
    """Drop the storage of ``model`` (shapes are kept); tied embeddings stay tied."""
    model.to("meta")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def is_meta(model: nn.Module) -> bool:
    return next(model.parameters()).is_meta


def shard(model: nn.Module, device: torch.device, *, is_main: bool) -> nn.Module:
    """A sharded copy of ``model`` on ``device`` whose weights and buffers are the main process's.

    Each decoder layer is one FSDP unit (its parameters are gathered for its forward and backward
    only), the embeddings/norm/head form the root unit.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from llmsculpt.models.spec import spec_for

    # the copy starts as a meta-device skeleton (no second full copy of the weights on the main process)
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    net = copy.deepcopy(model, memo)
    for layer in spec_for(model).decoder_layers(net):
        fully_shard(layer)
    fully_shard(net)
    net.to_empty(device=device)
    full = dict(model.state_dict()) if is_main else {}
    set_model_state_dict(net, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    plain_buffers = dict(model.named_buffers())
    for name, buffer in net.named_buffers():  # e.g. rotary inv_freq: not in the state dict, emptied above
        if is_main:
            buffer.data.copy_(plain_buffers[name])
        dist.broadcast(buffer.data, src=0)
    return net


def gather_weights(net: nn.Module, model: nn.Module, *, is_main: bool) -> None:
    """Copy the sharded weights of ``net`` into the main process's plain ``model`` (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main:
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in full.items()})


def gather_grads(net: nn.Module, model: nn.Module, *, is_main: bool) -> None:
    """Whole gradients of ``net`` as ``.grad`` of the main process's plain ``model`` (collective)."""
    plain = dict(model.named_parameters())
    for name, p in net.named_parameters():
        if p.grad is None:  # the same parameters have gradients on every process
            continue
        grad = p.grad.full_tensor()
        if is_main:
            plain[name].grad = grad.to(plain[name].device)


def gather_optimizer_state(optimizer: torch.optim.Optimizer, *, is_main: bool) -> dict | None:
    """The optimiser's state dict with full-size moments on the main process (None on the others,
    which take part in the gathers but keep nothing; collective)."""
    from torch.distributed.tensor import DTensor

    sd = optimizer.state_dict()
    state = {}
    for index in sorted(sd["state"]):
        entry = {}
        for key, value in sd["state"][index].items():
            if isinstance(value, DTensor):  # every process takes part in the gather
                value = value.full_tensor()
            if is_main:
                entry[key] = value.cpu() if isinstance(value, torch.Tensor) else value
        state[index] = entry
    return {"state": state, "param_groups": sd["param_groups"]} if is_main else None


def load_optimizer_state(optimizer: torch.optim.Optimizer, full: dict | None, *, is_main: bool) -> None:
    """Load a full-size state dict (needed on the main process only) into a sharded optimiser: each
    moment is scattered from the main process to the shards (collective)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    layout = broadcast_object(
        {i: {k: ((tuple(v.shape), v.dtype) if v.dim() else v) for k, v in s.items()} for i, s in full["state"].items()}
        if is_main else None
    )  # shapes of the moments; scalars (AdamW's step) travel whole
    groups = broadcast_object(full["param_groups"] if is_main else None)
    state = {}
    for index in sorted(layout):
        p = params[index]
        entry = {}
        for key, spec in layout[index].items():
            if isinstance(spec, torch.Tensor):
                entry[key] = spec
                continue
            shape, dtype = spec
            value = full["state"][index][key].to(dtype) if is_main else torch.empty(shape, dtype=dtype)
            if isinstance(p, DTensor):
                value = distribute_tensor(value.to(p.device_mesh.device_type), p.device_mesh, p.placements, src_data_rank=0)
            else:
                value = value.to(p.device)
                dist.broadcast(value, src=0)
            entry[key] = value
        state[index] = entry
    optimizer.load_state_dict({"state": state, "param_groups": groups})
