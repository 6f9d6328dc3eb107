"""The run engine: one loop that performs a schedule's events, with state, logs and checkpoints.

A schedule (run/accel.py: Adapt-Accel; run/pruning_aware.py: EfficientLLM) says what happens next
as a generator of events (run/events.py). The engine does everything else, the same way for both:

- the processes (run/processes.py): the plain ``model`` and the ``net`` that
  training runs through (itself, DDP around it, or a sharded FSDP2 copy), re-wrapped after every
  change of shapes;
- the optimiser: created on first use after every pruning or LoRA change, or carried over; for
  bf16/fp16 weights it keeps fp32 master weights and moments (train/mixed.py), which checkpoints
  save and a carry slices like the moments;
- placement: the model is moved to this process's device only if it is not there already (load it
  on ``run.processes.process_device()`` to avoid any move); a sharded run's host copy stays on the CPU;
- pruning with "the main process decides, the others apply" (run/pruning.py);
- the state (the schedule's own counters plus the composed plan and the number of steps logged,
  under the schedule's ``counter`` key), ``<dir>/log.jsonl``, the progress bar, ``stop_after``;
- checkpoints (run/checkpoint.py) every ``checkpoint_every`` logged steps and wherever the schedule
  asks, and resuming from the latest one: the schedule's generator then starts from the restored
  state, so it continues with the same data order and learning rates.

Only the main process writes (checkpoints, log); the others wait for it at a barrier.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from llmsculpt.plan import Plan
from llmsculpt.run import pruning
from llmsculpt.run.checkpoint import load_adapters, load_checkpoint, read_log, save_adapters, save_checkpoint
from llmsculpt.run.events import (AttachLora, Checkpoint, Event, MergeLora, PruneTo, PruningStep, Step,
                                  Train)
from llmsculpt.run.processes import Processes
from llmsculpt.structures.shapes import architecture
from llmsculpt.train.data import Example, collate
from llmsculpt.train.trainer import add_lora, make_optimizer, merge_lora, train_step


class Interrupted(Exception):
    """Raised by ``stop_after`` to simulate a killed run in tests."""


class Schedule(Protocol):
    """What a schedule tells the engine. ``start`` sees the placed model and returns the initial
    state (with ``"config"``: resuming requires the same); ``events`` yields what happens next."""

    desc: str  # progress-bar label
    counter: str  # state key counting the logged steps ("global_step", "step")
    lr: float  # the learning rate new optimisers are created with (each Train sets its own)
    total: int  # logged steps of the whole run (progress bar)

    def start(self, run: Run) -> dict: ...

    def resumed(self, state: dict) -> list[Event]: ...

    def events(self, run: Run) -> Generator[Event, object, None]: ...


class Run:
    """A run in progress: what the schedule may read (``state``, ``model``, ``params()``, ``procs``)."""

    def __init__(self, procs: Processes, model: nn.Module, tokenizer, schedule: Schedule, *, ckpt: Path | None,
                 every: int, stop_after: int | None) -> None:
        self.procs, self.model, self.tokenizer = procs, model, tokenizer
        self.ckpt, self.every, self.stop_after = ckpt, every, stop_after
        self.counter, self.lr = schedule.counter, schedule.lr
        self.state: dict = {}
        self.plan: Plan | None = None
        self.log: list[dict] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.lora = False  # LoRA adapters attached
        self._net: nn.Module | None = None
        self._log_file = None
        self.bar = None

    # ---- what training runs through -------------------------------------------------------------
    @property
    def net(self) -> nn.Module:
        """The wrapped model (DDP / sharded copy / itself); wrapped again after a change of shapes."""
        if self._net is None:
            self._net = self.procs.wrap(self.model)
        return self._net

    def changed(self) -> None:
        """The model's parameters changed (pruned, adapters added or merged): re-wrap before the next
        use, and start a new optimiser."""
        self._net = None
        self.optimizer = None

    def sync(self) -> None:
        """The main process's plain model up to date with the trained net (sharded runs)."""
        if self._net is not None:
            self.procs.sync(self._net, self.model)

    def params(self) -> int:
        """Parameters of the model itself (LoRA adapters, which are merged away, not counted)."""
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" not in n)

    def device(self) -> torch.device:
        return self.procs.device if self.procs.device is not None else next(self.model.parameters()).device

    def frozen_copy(self) -> nn.Module:
        """A frozen copy of the model as it is now (a distillation teacher), sharded like training."""
        copied = copy.deepcopy(self.model)
        if self.procs.sharded:
            copied = self.procs.wrap(copied)
        return copied.eval().requires_grad_(False)

    def batch(self, examples: list[Example]) -> tuple[dict, float]:
        """This process's share of a global batch, collated, and its loss scale (processes.my_share)."""
        mine, scale = self.procs.my_share(examples)
        return collate(mine, self.tokenizer.pad_token_id or 0), scale

    # ---- events ---------------------------------------------------------------------------------
    def perform(self, event: Event):
        """Do one event; returns its outcome (a loss, a log entry's fields, or None)."""
        if isinstance(event, Train):
            return self._train(event)
        if isinstance(event, Step):
            return self._step(event)
        if isinstance(event, PruneTo):
            return self._prune_to(event)
        if isinstance(event, PruningStep):
            step, entry = pruning.pruning_step(self, event)
            self._compose(step)
            return entry
        if isinstance(event, AttachLora):
            return self._attach(event)
        if isinstance(event, MergeLora):
            if self.lora:
                self.model, self.lora = merge_lora(self.model), False
                self.changed()
            return None
        if isinstance(event, Checkpoint):
            return self.checkpoint(optimizer=event.optimizer)
        raise TypeError(f"not an event: {event!r}")

    def _prune_to(self, event: PruneTo) -> Plan | None:
        """Prune (run/pruning.py); a new optimiser afterwards, or the old one's moments carried
        over to the surviving rows and columns (kept as it is if nothing was pruned)."""
        self.sync()
        carry = (pruning.Carry(self.procs, self.model, self.optimizer)
                 if event.carry and self.optimizer is not None else None)
        step = pruning.prune_to(self, event)
        if step is not None:
            self._compose(step)
        if carry is None or step is not None:
            self.optimizer = None
        if carry is not None and step is not None:
            self.optimizer = make_optimizer(self.net, self.lr)
            carry.finish(step.without_updates(), self.model, self.optimizer)
        return step

    def _train(self, event: Train) -> float:
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.net, self.lr)
        batch, scale = self.batch(event.examples)
        batch = {k: v.to(self.device()) for k, v in batch.items()}
        loss = train_step(self.net, batch, self.optimizer, event.lr, teacher=event.teacher,
                          temperature=event.temperature, distill_weight=event.distill_weight, loss_scale=scale)
        return self.procs.mean(loss)

    def _step(self, event: Step) -> None:
        entry = {"step": self.state[self.counter]} | event.entry
        self.log.append(entry)
        if self._log_file is not None:
            self._log_file.write(json.dumps(entry) + "\n")
            self._log_file.flush()
        self.state[self.counter] += 1
        self.bar.update(1)
        if event.postfix:
            self.bar.set_postfix(**event.postfix)
        done = self.state[self.counter]
        if self.stop_after is not None and done >= self.stop_after:
            raise Interrupted(f"stopped after {self.stop_after} steps")
        if self.ckpt is not None and self.every and done % self.every == 0:
            if self.lora:  # the phase's base is checkpointed already: only the adapters changed
                if self.procs.is_main:
                    save_adapters(self.ckpt, self.model, self.optimizer, self.state)
                self.procs.barrier()
            else:
                self.checkpoint()

    def _compose(self, step: Plan) -> None:
        """The run's plan: selections only; what updates a step made live on in the trained weights."""
        self.plan = self.plan.compose(step.without_updates())
        self.state["plan"] = self.plan.to_dict()
        self.changed()

    def _attach(self, event: AttachLora) -> None:
        with torch.random.fork_rng():  # seeded: a resumed phase starts from the same adapters
            torch.manual_seed(event.seed)
            self.model = add_lora(self.model)
        self.lora = True
        self.changed()
        if event.restore and self.ckpt is not None:
            found = load_adapters(self.ckpt, self.state, device=self.device())
            if found is not None:
                from peft import set_peft_model_state_dict

                adapters, optimizer_state, state = found
                set_peft_model_state_dict(self.model, adapters)
                self.optimizer = make_optimizer(self.model, self.lr)
                self.optimizer.load_state_dict(optimizer_state)
                self.state.clear()
                self.state.update(state)

    def open_log(self) -> None:
        """``<dir>/log.jsonl`` written anew (main process): the entries kept on resume, then each step's."""
        if self.ckpt is not None and self.procs.is_main:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.ckpt / "log.jsonl", "w")
            self._log_file.writelines(json.dumps(e) + "\n" for e in self.log)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._log_file is not None:
            self._log_file.close()

    def checkpoint(self, *, optimizer: bool = True) -> None:
        """The main process writes the model, optimiser state and run state; every process waits
        until the checkpoint is complete. Without a checkpoint directory: only ``sync``."""
        self.sync()
        if self.ckpt is None:
            return
        opt_state = (self.procs.optimizer_state(self.optimizer)
                     if optimizer and self.optimizer is not None else None)
        if self.procs.is_main:
            save_checkpoint(self.ckpt, self.model, self.tokenizer, opt_state, self.state)
        self.procs.barrier()


def run_schedule(schedule: Schedule, model: nn.Module, tokenizer, *, checkpoint_dir: str | os.PathLike | None,
                 checkpoint_every: int, resume: bool, stop_after: int | None, progress: bool,
                 procs: Processes) -> tuple[nn.Module, Plan, list[dict]]:
    """Perform ``schedule`` on ``model``; returns the model, the composed plan and the log."""
    from tqdm.auto import tqdm

    from llmsculpt.models.placement import fp32_rotary

    model = fp32_rotary(procs.place(model))  # as a resumed run's checkpoint loads them
    run = Run(procs, model, tokenizer, schedule, ckpt=Path(checkpoint_dir) if checkpoint_dir is not None else None,
              every=checkpoint_every, stop_after=stop_after)
    run.state = schedule.start(run)
    run.state.setdefault("plan", Plan.keep_all(architecture(model)).to_dict())
    opt_state = None
    if resume:
        first = next(model.parameters())
        where = torch.device("cpu") if procs.sharded else first.device
        run.model, opt_state, state = load_checkpoint(run.ckpt, run.state["config"], where, dtype=first.dtype,
                                                      weights=procs.is_main or not procs.sharded)
        run.state = state
        for event in schedule.resumed(state):
            run.perform(event)
        run.log = read_log(run.ckpt, run.state[run.counter])
    run.plan = Plan.from_dict(run.state["plan"])
    procs.barrier()  # every process has read the checkpoint before the main one writes the log anew
    run.open_log()
    run.bar = tqdm(total=schedule.total, initial=run.state[run.counter], desc=schedule.desc,
                   disable=not (progress and procs.is_main))
    run.net  # wrapped now: in a sharded run the other processes drop their full weights here
    if opt_state is not None:
        run.optimizer = make_optimizer(run.net, run.lr)
        procs.load_optimizer_state(run.optimizer, opt_state)
    try:
        events = schedule.events(run)
        outcome = None
        while True:
            try:
                event = events.send(outcome)
            except StopIteration:
                break
            outcome = run.perform(event)
    finally:
        run.close()
    return run.model, run.plan, run.log
