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

With a ``reducer`` (importance.groups.GroupReducer) under FSDP2 every process reduces the gradient
of its own shard (its rows of each matrix) to the reducer's vectors, and only those vectors cross
processes (per-column partial sums all-reduced, per-row values gathered): no whole gradient is ever
assembled anywhere (``_reduce_shard``); in a pass of one backward each layer's shards are reduced as
soon as FSDP2 has reduce-scattered them (:class:`_Streaming`), so a process holds about one layer's.
Under DDP the gradients are whole already and the main process reduces them. Without a reducer
whole gradients are gathered into the main process's plain copy. Shard-resident (``resident=``, a
launched prune: run/shards.py), every process's plain model is a meta skeleton, only reduced vectors
may cross processes (a whole gradient is refused), the agreed plan travels whole (update values too)
and ``applied`` reshards ``net`` with it in place of re-wrapping a host copy. The root unit's
parameters are replicated there, so their few scored gradients (hidden channels) are summed first.
Only the scored parameters get gradients (the embedding gets none), and the loss is the local
engine's chunked one, run as the net's forward (run/shards.through_forward).
The decoder layers of a gradient pass on calibration ids are checkpointed as in the local
engine (measure/checkpointing.py: inside each FSDP unit, so a layer's recomputation runs while
FSDP2 holds its gathered weights for the backward); the hooks count a recomputed forward once.
"""

from __future__ import annotations

import copy
import gc
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.measure.checkpointing import checkpointed_layers
from llmsculpt.measure.hooks import Replay, input_hessians, layer_io_hooks
from llmsculpt.measure.local import Measurements, _grads_on, _scored, batch_size, deliverer, scored_parameters, split_share
from llmsculpt.measure.needs import Needs


def micro_batch_for(n_samples: int, seq_len: int, world: int) -> int:
    """Calibration samples per pass and process when the caller does not say: each process's whole
    share in one pass, up to the local engine's ``GRAD_TOKENS`` tokens (a second pass would gather
    the root unit again while the first pass's gradients are held)."""
    from llmsculpt.measure.local import GRAD_TOKENS

    return max(1, min(math.ceil(n_samples / world), GRAD_TOKENS // seq_len))


def _full(grad: torch.Tensor) -> torch.Tensor:
    """A whole gradient: FSDP's DTensor shards are gathered (collective); DDP's are whole already."""
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad


def _shard_local(p, reducer, name: str, *, resident: bool) -> bool:
    """Whether ``p``'s gradient is reduced where it lives: one the reducer turns into vectors that is
    an FSDP2 shard (a DTensor on dim 0) or, shard-resident, a replicated root parameter's (DDP
    gradients are whole already: the main process reduces them)."""
    if reducer is None or name not in reducer.names:
        return False
    if not hasattr(p.grad, "to_local"):
        return resident
    return all(pl.is_shard(0) for pl in p.grad.placements)


@contextmanager
def _only_scored_grads(net: nn.Module, scored: dict) -> Iterator[None]:
    """Within the block only ``net``'s parameters named in ``scored`` (the plain model's) require
    gradients, as the local engine's ``_grads_on`` sets them; the flags are restored after (a
    training run trains all of them)."""
    params = {n.removeprefix("module."): p for n, p in net.named_parameters()}
    flags = {n: p.requires_grad for n, p in params.items()}
    _grads_on(params, {n: params[n] for n in scored if n in params})
    try:
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])


class _Streaming(Replay):
    """The replay of a pass with one backward that also reduces the decoder layers' gradient shards
    as soon as they exist: FSDP2 sets a unit's sharded ``.grad`` in its post-backward, and the
    residual stream reaches layer i only through unit i+1's post-backward node, so whenever a layer's
    recomputation starts, every shard gradient there is complete. A process then holds about one
    layer's gradient shards at a time, not all of them until the pass ends (70B over 8 devices:
    18.8 GB per device). Replicated gradients (the root unit's) still accumulate, so they wait for the
    end. Collective: every process recomputes the same layers in the same order."""

    def __init__(self, reduce_ready, device) -> None:
        super().__init__()
        self.reduce_ready, self.device = reduce_ready, device

    @contextmanager
    def running(self) -> Iterator[None]:
        if self.depth == 0:
            if self.device is not None and torch.device(self.device).type == "cuda":
                torch.cuda.synchronize(self.device)  # FSDP2 reduce-scatters on its own stream
            self.reduce_ready()
        with super().running():
            yield


class ShardedEngine:
    """Measures through ``net`` on every process of ``procs`` (run.processes.Processes, duck-typed:
    rank, world, device, is_main, sharded, wrap, share, sum_over_processes, mean, sync)."""

    def __init__(self, procs, net: nn.Module, *, micro_batch: int | None = None, resident: nn.Module | None = None) -> None:
        """``resident``: the plain model is a meta skeleton on every process (this one, as given) and
        ``net``'s shards are the only weights (run/shards.py): ``applied`` then reshards ``net`` with
        the agreed plan instead of re-wrapping a whole host copy."""
        self.procs, self.micro_batch = procs, micro_batch
        self._net, self.stale = net, False
        self.skeleton = copy.deepcopy(resident) if resident is not None else None
        self._agreed = None

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

        if self.skeleton is not None:  # the whole plan, update values too: every process applies them to its shards
            self._agreed = self.procs.share(plan if self.decides else None)
            return self._agreed
        shared = self.procs.share(plan.to_dict() if self.decides else None)  # collective: every process calls it
        return plan if self.decides else Plan.from_dict(shared)

    def applied(self, model: nn.Module) -> None:
        if self.skeleton is None:
            self.stale = True  # re-wrap lazily: the planner may stop here, and the caller re-wraps anyway
            return
        from llmsculpt.models.residency import trim_heap
        from llmsculpt.run.shards import reshard

        self._net = reshard(self._net, self.skeleton, self._agreed, model, self.procs.device)
        self.skeleton = copy.deepcopy(model)
        gc.collect()  # FSDP2's modules and their hooks refer to each other: the old net goes only this way
        trim_heap()

    # ---- passes ---------------------------------------------------------------------------
    def _watched(self, model: nn.Module) -> nn.Module:
        return self.net if self.procs.sharded else model  # the modules that run (DDP runs model's own)

    def _gather_grads(self, model: nn.Module, needs: Needs, out: Measurements, reducer=None, *,
                      only_shards: bool = False) -> None:
        """Every gradient of the pass reduced to scores (or gathered whole, see the module docstring);
        ``only_shards``: just the FSDP2 shards' gradients that are there now (see :class:`_Streaming`)."""
        scored = scored_parameters(model, needs.grad_params)  # the same parameters as the local engine's
        deliver = deliverer(out, reducer, needs)
        for name, p in self.net.named_parameters():
            name = name.removeprefix("module.")  # DDP's wrapper
            if only_shards and not (p.grad is not None and hasattr(p.grad, "to_local")):
                continue
            resident = self.skeleton is not None
            if p.grad is not None and name in scored and _shard_local(p, reducer, name, resident=resident):
                self._reduce_shard(name, p, reducer, out)  # only score vectors cross processes
                p.grad = None
            elif only_shards:
                continue
            elif p.grad is not None and name in scored:
                if self.skeleton is not None:
                    raise SculptError(f"{name}'s gradient would have to be gathered whole; the shard-resident "
                                      "prune scores only what the shards reduce (taylor, taylor_vector)")
                grad = _full(p.grad)  # every process takes part in the gather
                p.grad = None
                if self.decides:
                    deliver(name, scored[name], grad.cpu() if self.procs.sharded else grad.detach(), None)

    def _reduce_shard(self, name: str, p: nn.Parameter, reducer, out: Measurements) -> None:
        """``p``'s gradient reduced to the reducer's vectors where it lives: each process scores its own
        rows (FSDP2 shards dim 0 as ``torch.chunk`` does), per-column sums are added over processes and
        per-row values concatenated; the deciding process keeps the vectors. A replicated parameter's
        gradient (the root unit's, shard-resident) is first summed over processes and averaged, as
        FSDP2 reduces a shard's, and each process then scores the rows it would hold. Collective."""
        import torch.distributed as dist

        from llmsculpt.importance.base import TensorStats
        from llmsculpt.importance.groups import along
        from llmsculpt.run.shards import is_sharded, rows_of

        rows, world = p.shape[0], self.procs.world
        chunk = math.ceil(rows / world)
        spans = [rows_of(rows, world, r) for r in range(world)]  # each process's rows
        if is_sharded(p):
            grad, weight = p.grad.to_local(), p.to_local()
        else:
            dist.all_reduce(p.grad)
            p.grad /= world
            mine = spans[self.procs.rank]
            grad, weight = p.grad[mine], p[mine]
        s = TensorStats(weight=weight.detach().float(), grad=grad.float())
        for metric in reducer.metrics:
            e = metric.element(s)
            for dim, size in reducer.plan[name]:
                v = along(e, dim)
                if dim == 1 and e.dim() == 2:  # per column: the shards' partial sums add up
                    dist.all_reduce(v)
                    whole = v
                else:  # per row: each process holds its rows' values
                    padded = torch.zeros(chunk, dtype=v.dtype, device=v.device)
                    padded[: v.shape[0]] = v
                    parts = [torch.empty_like(padded) for _ in range(world)]
                    dist.all_gather(parts, padded)
                    whole = torch.cat([part[: sp.stop - sp.start] for sp, part in zip(spans, parts)])
                if self.decides:
                    out.reduced.setdefault(metric.name, {})[(name, dim, size)] = whole.reshape(-1, size).sum(1).cpu()

    def _calibration(self, model: nn.Module, batch: torch.Tensor, needs: Needs, reducer=None) -> Measurements:
        unsupported = [n for n in ("grad_sq", "act", "moments", "hessians") if getattr(needs, n)]
        if unsupported:
            raise SculptError(f"sharded Adapt-Pruner measures gradients only; the metric also needs "
                              f"{', '.join(unsupported)}: use taylor/magnitude, or run without --fsdp")
        from llmsculpt.eval.chunked_loss import causal_lm_loss
        from llmsculpt.run.shards import through_forward

        procs, net = self.procs, self.net
        total = batch_size(batch)
        out = Measurements(samples=total)
        if not needs.any:
            return out
        mine = batch[procs.rank :: procs.world].to(procs.device)
        # every process runs the same number of passes (each is a collective); spare ones weigh nothing
        micro = self.micro_batch or micro_batch_for(total, batch.shape[1], procs.world)
        rounds = math.ceil(math.ceil(total / procs.world) / micro)
        chunks = list(torch.split(mine, micro)) if len(mine) else []
        loss_sum = torch.zeros(1, dtype=torch.float64)
        net.zero_grad(set_to_none=True)
        if needs.grad and reducer is not None and procs.sharded and rounds == 1:
            replay = _Streaming(lambda: self._gather_grads(model, needs, out, reducer, only_shards=True),
                                procs.device)
        else:  # several backwards accumulate into the shards' gradients: reduced once, after the last
            replay = Replay()
        with ExitStack() as stack:
            if needs.grad:  # as the local engine: only the scored parameters get gradients (no embedding's)
                stack.enter_context(_only_scored_grads(net, _scored(model, needs, reducer)))
            imp = stack.enter_context(layer_io_hooks(self._watched(model), distance=needs.layer_change, replay=replay)) \
                if needs.layer_change else None
            stack.enter_context(checkpointed_layers(self._watched(model), replay, enabled=needs.grad))
            stack.enter_context(torch.set_grad_enabled(needs.grad))
            for k in range(rounds):
                real = k < len(chunks)
                ids = chunks[k] if real else batch[:1].to(procs.device)
                if not real and imp is not None:
                    hooks_off = imp.sums.clone(), imp.counts.clone()
                loss = through_forward(net, causal_lm_loss, ids)  # the local engine's chunked loss
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
