"""Fully sharded training (PyTorch FSDP2, ``fully_shard``) of a model that is pruned between phases.

Training memory (weights, gradients, AdamW moments) is split over the processes: each holds 1/N of
every parameter. Pruning, however, needs whole matrices, so a run keeps two views of the model:

- the *plain* model: an ordinary ``nn.Module``. On the main process it holds full weights on the
  host (CPU) and is brought up to date (``gather_weights``) only when it is needed: before a
  pruning and before a checkpoint. On the other processes it lives on the ``meta`` device — shapes
  without storage — so they never hold a full copy of the weights after the start.
- the *sharded* copy (``shard``): built from the plain model after every pruning, its shards filled
  from the main process's weights (broadcast), and trained.

Measuring passes run on the sharded copy too (``ShardedPasses`` for Adapt-Pruner; ``gather_grads``
for pruning-aware training): every process takes a slice of the batch, and only whole gradients are
gathered — into the main process's host copy, where scores are computed and the plan decided.

Optimiser state crosses the same boundary as an ordinary ``torch.optim.AdamW.state_dict()`` with
full-size moments, indexed like ``make_optimizer(plain_model)``'s parameters: the format the
checkpoints already use, so a checkpoint written by a sharded run resumes in one process and the
other way round, and ``optimizer_state="carry"`` works on it unchanged.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import nn


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

    from llmsculpt.train.distributed import broadcast_object

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


class ShardedPasses:
    """Adapt-Pruner's measuring passes on the sharded model (see methods/base.LocalPasses).

    Every process runs the method in lockstep on its plain model (whole on the main process, a meta
    skeleton elsewhere). ``measure`` runs layer importance and the gradient pass through the sharded
    copy, each process on its slice of the calibration batch: no device ever holds the whole model or
    its gradients. Importance sums and the loss are all-reduced; whole gradients are gathered to the
    main process's host copy, which alone scores and decides; ``agree`` shares its plan, and the
    pruned model is re-sharded before the next measurement.
    """

    def __init__(self, procs, net: nn.Module, *, micro_batch: int = 4) -> None:
        self.procs, self.net, self.micro_batch = procs, net, micro_batch
        self.decides = procs.is_main
        self.stale = False

    def measure(self, model: nn.Module, batch: torch.Tensor, needs, *, distance: str):
        from llmsculpt.errors import SculptError
        from llmsculpt.importance.base import GRAD
        from llmsculpt.importance.collect import Stats, scored_parameters
        from llmsculpt.importance.layer_importance import layer_io_hooks

        unsupported = set(needs) - {GRAD, "forward"}
        if unsupported:
            raise SculptError(f"sharded Adapt-Pruner measures gradients only; the metric also needs "
                              f"{', '.join(sorted(unsupported))}: use taylor/magnitude, or run without --fsdp")
        if self.stale:
            self.net = self.procs.wrap(model)
            self.stale = False
        procs, net = self.procs, self.net
        want_grad = GRAD in needs
        total = int(batch.shape[0])
        mine = batch[procs.rank :: procs.world].to(procs.device)
        # every process runs the same number of passes (each is a collective); spare ones weigh nothing
        rounds = math.ceil(math.ceil(total / procs.world) / self.micro_batch)
        chunks = list(torch.split(mine, self.micro_batch)) if len(mine) else []
        loss_sum = torch.zeros(1, dtype=torch.float64)
        net.zero_grad(set_to_none=True)
        with layer_io_hooks(net, distance=distance) as imp, torch.set_grad_enabled(want_grad):
            for k in range(rounds):
                real = k < len(chunks)
                ids = chunks[k] if real else batch[:1].to(procs.device)
                if not real:
                    hooks_off = imp.sums.clone(), imp.counts.clone()
                loss = net(input_ids=ids, labels=ids, use_cache=False).loss
                if real:
                    loss_sum += loss.item() * ids.shape[0]
                else:
                    imp.sums, imp.counts = hooks_off
                if want_grad:  # FSDP averages over processes: × world gives the whole batch's mean gradient
                    (loss * (ids.shape[0] / total * procs.world if real else 0.0)).backward()
        sums = procs.sum_over_processes({"sums": imp.sums, "counts": imp.counts, "loss": loss_sum})
        imp.sums, imp.counts = sums["sums"], sums["counts"]
        stats = Stats(samples=total, loss=float(sums["loss"].item()) / total)
        if want_grad:
            scored = scored_parameters(model)  # the same parameters as the local pass (collect.py)
            for name, p in net.named_parameters():
                if p.grad is not None and name in scored:
                    grad = p.grad.full_tensor()
                    if self.decides:
                        stats.grad[name] = grad.cpu()
            net.zero_grad(set_to_none=True)
        return stats, imp.values()

    def agree(self, plan):
        from llmsculpt.plan import Plan

        return Plan.from_dict(self.procs.share(plan.to_dict() if self.decides else None))

    def applied(self, model: nn.Module) -> None:
        self.stale = True  # re-shard lazily: the method may stop here, and the caller re-shards anyway
