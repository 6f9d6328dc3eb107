"""The measuring engine of a multi-process run: passes through the wrapped ``net`` (FSDP2, or DDP
for pruning-aware training), each process on its share; the main process decides.

Every process runs the planner in lockstep on its plain model (whole on the main process; under
FSDP a meta-device skeleton elsewhere). ``measure`` runs the passes through ``net``, so no device
ever needs the whole model and its gradients at once: statistics (layer importance, the loss, input
Hessians) are summed over processes, whole gradients are gathered into the main process's plain
copy, which alone scores and decides; ``agree`` shares its plan, and ``applied`` marks ``net`` stale
so the pruned model is re-wrapped before the next measurement (unless the caller sets ``net``
itself, as a training loop that re-wraps after every pruning does).

Two kinds of batch (see :class:`llmsculpt.measure.local.LocalEngine`):
- calibration ids [n, seq] (Adapt-Pruner under FSDP): every process takes rows rank::world, in
  micro-batches; gradients (``grad``), ``layer_change`` and ``forward`` are supported;
- a training share dict with ``loss_scale`` (EfficientLLM's pruning step, DDP or FSDP): one pass of
  the model's own loss × scale; ``grad`` and ``hessians`` are supported.

With a ``reducer`` (importance.groups.GroupReducer) the main process reduces each gathered gradient
to group-score vectors at once (``Measurements.reduced``) and keeps none whole; the shards' own
gradients live on their processes until the gather. (Decoder layers are not checkpointed here.)
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.measure.hooks import input_hessians, layer_io_hooks
from llmsculpt.measure.local import Measurements, batch_size, deliverer, scored_parameters, split_share
from llmsculpt.measure.needs import Needs


def _full(grad: torch.Tensor) -> torch.Tensor:
    """A whole gradient: FSDP's DTensor shards are gathered (collective); DDP's are whole already."""
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad


class ShardedEngine:
    """Measures through ``net`` on every process of ``procs`` (run.processes.Processes, duck-typed:
    rank, world, device, is_main, sharded, wrap, share, sum_over_processes, mean, sync)."""

    def __init__(self, procs, net: nn.Module, *, micro_batch: int = 4) -> None:
        self.procs, self.micro_batch = procs, micro_batch
        self._net, self.stale = net, False

    @property
    def decides(self) -> bool:
        return self.procs.is_main

    @property
    def net(self) -> nn.Module:
        return self._net

    @net.setter
    def net(self, net: nn.Module) -> None:
        """The caller re-wrapped the model: measure through this one from now on."""
        self._net, self.stale = net, False

    def measure(self, model: nn.Module, batch, needs: Needs, *, reducer=None) -> Measurements:
        if self.stale:
            self.net = self.procs.wrap(model)
        if isinstance(batch, dict):
            return self._share(model, batch, needs)
        return self._calibration(model, batch, needs, reducer)

    def agree(self, plan):
        """The deciding process's plan on every process. Its weight updates stay on the deciding
        process: the others receive the updated weights when the pruned model is wrapped again
        (DDP broadcasts the main process's module state, sharding fills the shards from it)."""
        from llmsculpt.plan import Plan

        shared = self.procs.share(plan.to_dict() if self.decides else None)  # collective: every process calls it
        return plan if self.decides else Plan.from_dict(shared)

    def applied(self, model: nn.Module) -> None:
        self.stale = True  # re-wrap lazily: the planner may stop here, and the caller re-wraps anyway

    # ---- passes ---------------------------------------------------------------------------
    def _watched(self, model: nn.Module) -> nn.Module:
        return self.net if self.procs.sharded else model  # the modules that run (DDP runs model's own)

    def _gather_grads(self, model: nn.Module, needs: Needs, out: Measurements, reducer=None) -> None:
        scored = scored_parameters(model, needs.grad_params)  # the same parameters as the local engine's
        deliver = deliverer(out, reducer, needs)
        for name, p in self.net.named_parameters():
            name = name.removeprefix("module.")  # DDP's wrapper
            if p.grad is not None and name in scored:
                grad = _full(p.grad)  # every process takes part in the gather
                p.grad = None
                if self.decides:
                    deliver(name, scored[name], grad.cpu() if self.procs.sharded else grad.detach(), None)

    def _calibration(self, model: nn.Module, batch: torch.Tensor, needs: Needs, reducer=None) -> Measurements:
        unsupported = [n for n in ("grad_sq", "act", "moments", "hessians") if getattr(needs, n)]
        if unsupported:
            raise SculptError(f"sharded Adapt-Pruner measures gradients only; the metric also needs "
                              f"{', '.join(unsupported)}: use taylor/magnitude, or run without --fsdp")
        procs, net = self.procs, self.net
        total = batch_size(batch)
        out = Measurements(samples=total)
        if not needs.any:
            return out
        mine = batch[procs.rank :: procs.world].to(procs.device)
        # every process runs the same number of passes (each is a collective); spare ones weigh nothing
        rounds = math.ceil(math.ceil(total / procs.world) / self.micro_batch)
        chunks = list(torch.split(mine, self.micro_batch)) if len(mine) else []
        loss_sum = torch.zeros(1, dtype=torch.float64)
        net.zero_grad(set_to_none=True)
        with ExitStack() as stack:
            imp = stack.enter_context(layer_io_hooks(self._watched(model), distance=needs.layer_change)) \
                if needs.layer_change else None
            stack.enter_context(torch.set_grad_enabled(needs.grad))
            for k in range(rounds):
                real = k < len(chunks)
                ids = chunks[k] if real else batch[:1].to(procs.device)
                if not real and imp is not None:
                    hooks_off = imp.sums.clone(), imp.counts.clone()
                loss = net(input_ids=ids, labels=ids, use_cache=False).loss
                if real:
                    loss_sum += loss.item() * ids.shape[0]
                elif imp is not None:
                    imp.sums, imp.counts = hooks_off
                if needs.grad:  # processes' gradients are averaged: × world gives the whole batch's mean
                    (loss * (ids.shape[0] / total * procs.world if real else 0.0)).backward()
        parts = {"loss": loss_sum} | ({"sums": imp.sums, "counts": imp.counts} if imp is not None else {})
        sums = procs.sum_over_processes(parts)
        out.loss = float(sums["loss"].item()) / total
        if imp is not None:
            imp.sums, imp.counts = sums["sums"], sums["counts"]
            out.layer = imp.values()
        if needs.grad:
            self._gather_grads(model, needs, out, reducer)
            net.zero_grad(set_to_none=True)
        return out

    def _share(self, model: nn.Module, batch: dict, needs: Needs) -> Measurements:
        unsupported = [n for n in ("grad_sq", "act", "moments") if getattr(needs, n)] + (
            ["layer_change"] if needs.layer_change else [])
        if unsupported:
            raise SculptError(f"a sharded training share measures gradients and Hessians only, not {', '.join(unsupported)}")
        procs, net = self.procs, self.net
        out = Measurements(samples=batch_size(batch))
        inputs, scale = split_share(batch, procs.device if procs.device is not None else next(model.parameters()).device)
        net.zero_grad(set_to_none=True)
        with input_hessians(self._watched(model), bool(needs.hessians), inputs=needs.hessians == "all") as hess:
            with torch.set_grad_enabled(needs.grad):
                loss = net(**inputs, use_cache=False).loss * scale
        if needs.grad:
            loss.backward()
        procs.sync(net, model, grads=needs.grad)  # sharded: whole weights and gradients on the main process
        out.loss = procs.mean(float(loss.item()))
        out.hessians = procs.sum_over_processes(dict(hess)) if needs.hessians else None  # the whole batch's X Xᵀ
        if needs.grad and self.decides:
            plain = scored_parameters(model, needs.grad_params)
            out.grad = {n: p.grad.detach() for n, p in plain.items() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        net.zero_grad(set_to_none=True)
        return out
