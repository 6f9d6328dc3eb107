"""Pruning inside a run: the main process decides, the others apply, every process ends equal.

Two kinds of pruning event (run/events.py):
- ``PruneTo`` (Adapt-Accel's phase pruning): a planner (llmsculpt.methods) prunes the model to a
  parameter target. In one process it measures on the model itself. With several processes the
  main process plans and prunes its copy, the others apply its plan to theirs; under FSDP,
  Adapt-Pruner instead runs in lockstep on every process, its passes through the sharded ``net``
  (measure.sharded), so no device holds the whole model and its gradients.
- ``PruningStep`` (EfficientLLM): one measuring pass on a training batch through ``net`` on every
  process, the main process picks the mini-groups, every process applies the agreed plan.

Either way the pruned shapes are checked equal on every process; the weights themselves reach the
other processes when the engine wraps the pruned model again (DDP and sharding copy the main
process's). ``Carry`` keeps AdamW's moments across a pruning (``optimizer_state="carry"``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from llmsculpt.errors import SculptError
from llmsculpt.measure import LocalEngine
from llmsculpt.measure.sharded import ShardedEngine
from llmsculpt.methods import PruneContext, prune_model
from llmsculpt.methods.pruning_aware import plan_step
from llmsculpt.plan import Plan
from llmsculpt.run.events import PruneTo, PruningStep
from llmsculpt.run.processes import Processes
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.train.optim_carry import MomentShadows
from llmsculpt.train.trainer import make_optimizer

if TYPE_CHECKING:
    from llmsculpt.run.engine import Run


def prune_to(run: Run, event: PruneTo) -> Plan | None:
    """Prune ``run.model`` in place to the event's target; returns the plan (None: already there)."""
    procs, model, pcfg = run.procs, run.model, event.config
    if count_params(model) <= pcfg.target_params:
        return None
    calibration = lambda seed: event.calibration  # noqa: E731  (one batch: the phase's own data)
    if procs.sharded and pcfg.method == "adaptive":  # in lockstep on every process, passes through net
        ctx = PruneContext(model, run.tokenizer, pcfg, calibration, engine=ShardedEngine(procs, run.net), inplace=True)
        run.model, result = prune_model(ctx)
        _check_same_shapes(procs, run.model, pcfg.method)
        return result.plan
    arch = architecture(model)
    described = None
    if procs.is_main:
        if procs.sharded:  # other methods score the whole model on the main process's device
            model.to(procs.device)
        run.model, result = prune_model(PruneContext(model, run.tokenizer, pcfg, calibration, engine=LocalEngine(),
                                                     inplace=True))
        if procs.sharded:
            run.model.to("cpu")
        if procs.world == 1:
            return result.plan
        described = result.plan.to_dict()
    shared = Plan.from_dict(procs.share(described))
    if procs.is_main:
        plan = result.plan
    else:  # the update values reach this process with the main process's weights, on re-wrapping
        apply_plan(model, follower_plan(shared, arch))
        plan = shared
    _check_same_shapes(procs, run.model, pcfg.method)
    return plan


def pruning_step(run: Run, event: PruningStep) -> tuple[Plan, dict]:
    """One pruning-aware step on ``run.model`` in place; returns (the step's plan, its log fields)."""
    procs, model = run.procs, run.model
    engine = LocalEngine() if procs.world == 1 else ShardedEngine(procs, run.net)
    batch, scale = run.batch(event.examples)
    batch = {k: v.to(run.device()) for k, v in batch.items()} | {"loss_scale": scale}
    arch = architecture(model)
    plan, entry = plan_step(engine, model, batch, event.config, quantum=event.quantum, prune_done=event.prune_done)
    apply_plan(model, plan if engine.decides else follower_plan(plan, arch))
    _check_same_shapes(procs, model, "pruning-aware")
    return plan, entry


def follower_plan(plan: Plan, arch) -> Plan:
    """What a process that did not decide ``plan`` applies to its copy (``arch``): the selections, and
    zero placeholders for the biases an update adds, so that its shapes equal the deciding process's.
    The values of every update reach it with the deciding process's weights, when the pruned model
    is wrapped again (DDP broadcasts them; sharding fills the shards from them)."""
    hidden = plan.resulting(arch).hidden
    biases = {(u.layer, u.module): replace(u, op="add", value=torch.zeros(hidden))
              for u in plan.updates if u.param == "bias"}
    return replace(plan.without_updates(), updates=list(biases.values()))


def _check_same_shapes(procs: Processes, model, what: str) -> None:
    """Every process's pruned model has the main process's shapes (else DDP/sharding cannot copy
    the main process's weights to the others)."""
    if procs.world == 1:
        return
    shapes = procs.share(architecture(model).to_dict() if procs.is_main else None)
    if architecture(model).to_dict() != shapes:
        raise SculptError(f"{what} pruning left the processes with different shapes: the plan shared by the "
                          "main process does not reproduce its model; run it in a single process")


class Carry:
    """``optimizer_state="carry"`` across one pruning. A process holding the whole model (one process,
    or DDP) carries its own moments; in a sharded run the main process gathers the full moments,
    carries them on its plain model and scatters the result into the new sharded optimiser."""

    def __init__(self, procs: Processes, model, optimizer) -> None:
        self.procs = procs
        self.shadows = None
        if not procs.sharded:
            self.shadows = MomentShadows(model, optimizer)
            return
        full = procs.optimizer_state(optimizer)
        if procs.is_main:
            plain = make_optimizer(model, 0.0)
            plain.load_state_dict(full)
            self.shadows = MomentShadows(model, plain)

    def finish(self, step: Plan, model, optimizer) -> None:
        """Load the carried moments into ``optimizer``, built on the pruned ``model``'s net."""
        if not self.procs.sharded:
            self.shadows.carry(step, model, optimizer)
            return
        full = None
        if self.procs.is_main:
            plain = make_optimizer(model, optimizer.param_groups[0]["lr"])
            self.shadows.carry(step, model, plain)
            full = plain.state_dict()
        self.procs.load_optimizer_state(optimizer, full)
