"""Adapt-Accel as a schedule: prune a little, train a little, repeat — resumable.

N phases; phase i prunes to original·P^i parameters (P = (target/original)^(1/N)) with
Adapt-Pruner (a few steps), then trains on its share of the data (linear growth by default, drawn
without replacement from one seeded shuffle). One learning-rate schedule (WSD by default) spans all
phases. After every pruning the AdamW optimiser starts afresh (shapes change), or with
``optimizer_state="carry"`` the moments of the surviving rows and columns are carried over
(train/optim_carry.py). A checkpoint is written after every phase and every ``checkpoint_every``
steps; the data order is a function of the seed, so ``resume=True`` continues exactly. LoRA mode
merges the adapters before each pruning; within a phase its checkpoints hold the phase's frozen
base (written once after the pruning) plus the adapters and optimiser state.

This module only says what happens when; the run engine (run/engine.py) does it, on one process or
several (data-parallel, or fully sharded with ``shard=True``; see run/processes.py). Results equal
a single-process run up to the reduction order of the averaged gradients.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from dataclasses import asdict

import torch

from llmsculpt.config import AccelConfig, PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.plan import Plan
from llmsculpt.run.engine import Run, run_schedule
from llmsculpt.run.events import AttachLora, Checkpoint, Event, MergeLora, PruneTo, Step, Train
from llmsculpt.run.processes import Processes
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.train.data import Example
from llmsculpt.train.phases import data_shares, phase_targets
from llmsculpt.train.schedule import learning_rate


def calibration_windows(examples: list[Example], n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` seeded windows of ``seq_len`` tokens from the concatenated examples: a phase's
    calibration batch for its pruning."""
    stream = [t for e in examples for t in e.input_ids]
    if len(stream) < seq_len + 1:
        raise SculptError(f"the training data has {len(stream)} tokens, too few for calibration windows of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n,), generator=g).tolist()
    return torch.tensor([stream[s : s + seq_len] for s in starts], dtype=torch.long)


class AccelSchedule:
    """The events of an Adapt-Accel run (see the module docstring)."""

    desc = "adapt-accel"
    counter = "global_step"

    def __init__(self, examples: list[Example], cfg: AccelConfig) -> None:
        self.examples, self.cfg, self.lr = examples, cfg, cfg.lr
        self.order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        self.shares = data_shares(len(examples), cfg.phases, cfg.data_allocation)
        self.steps = [math.ceil(s / cfg.batch_size) for s in self.shares]
        self.total = sum(self.steps)
        if self.total == 0:
            raise SculptError("no training steps: the data is empty")
        self.targets: list[int] = []
        self.teacher = None

    def start(self, run: Run) -> dict:
        cfg = self.cfg
        original = count_params(run.model)
        arch = architecture(run.model)
        floor = arch.min_param_count()
        if cfg.target_params <= floor:
            raise SculptError(
                f"target {cfg.target_params:,} parameters is below the smallest model structured pruning can reach "
                f"({floor:,}: embeddings plus one head and one MLP channel per layer)"
            )
        self.targets = phase_targets(original, cfg.target_params, cfg.phases)
        if cfg.distill:
            self.teacher = run.frozen_copy()
        return {"phase": 0, "pruned": False, "step_in_phase": 0, "global_step": 0,
                "plan": Plan.keep_all(arch).to_dict(), "config": asdict(cfg), "original_params": original}

    def resumed(self, state: dict) -> list[Event]:
        """A LoRA phase had begun on the checkpointed (pruned) base: the same adapters again, and
        their checkpointed training if it continues that phase."""
        if self.cfg.mode == "lora" and state["pruned"]:
            return [AttachLora(self.cfg.seed + state["phase"], restore=True)]
        return []

    def phase_data(self, phase: int) -> list[Example]:
        start = sum(self.shares[:phase])
        return [self.examples[i] for i in self.order[start : start + self.shares[phase]]]

    def events(self, run: Run) -> Generator[Event, object, None]:
        cfg, state = self.cfg, run.state
        for phase in range(state["phase"], cfg.phases):
            data = self.phase_data(phase)
            if not state["pruned"]:
                yield MergeLora()
                pcfg = PruneConfig(method=cfg.prune_method, target_params=self.targets[phase], seed=cfg.seed + phase,
                                   round_to=cfg.round_to, serve=cfg.serve,
                                   options={"steps": cfg.prune_steps} if cfg.prune_method == "adaptive" else {})
                calib = calibration_windows(data or self.examples, cfg.calib_samples, cfg.calib_len, cfg.seed + phase)
                yield PruneTo(pcfg, calib, carry=cfg.optimizer_state == "carry" and cfg.mode == "full")
                state.update(pruned=True, step_in_phase=0)
                if cfg.mode == "lora":  # the phase's frozen base; later checkpoints add only adapters
                    yield Checkpoint(optimizer=False)
                    yield AttachLora(cfg.seed + phase)
            for k in range(state["step_in_phase"], self.steps[phase]):
                g = state["global_step"]
                lr = learning_rate(cfg.schedule, g, self.total, lr=cfg.lr, min_lr=cfg.min_lr)
                loss = yield Train(data[k * cfg.batch_size : (k + 1) * cfg.batch_size], lr, teacher=self.teacher,
                                   temperature=cfg.temperature, distill_weight=cfg.distill_weight)
                state["step_in_phase"] = k + 1
                params = run.params()
                yield Step({"phase": phase, "loss": loss, "lr": lr, "params": params},
                           postfix={"phase": phase + 1, "loss": f"{loss:.3f}", "params": f"{params / 1e6:.1f}M"})
            yield MergeLora()
            state.update(phase=phase + 1, pruned=False, step_in_phase=0)
            yield Checkpoint()


def run_accel(
    model,
    tokenizer,
    examples: list[Example],
    cfg: AccelConfig,
    *,
    checkpoint_dir: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    shard: bool = False,
) -> tuple[torch.nn.Module, Plan, list[dict]]:
    """Interleave pruning and training; returns the model, the composed plan and the log.

    ``shard``: with several processes, train fully sharded (FSDP2) instead of data-parallel; the
    returned model then holds the final weights on the main process only.

    Example::

        model, plan, log = run_accel(model, tokenizer, examples, AccelConfig(target_params=100_000),
                                     checkpoint_dir="out.ckpt")
    """
    procs = Processes(shard=shard)
    if procs.sharded and cfg.mode == "lora":
        raise SculptError("LoRA training is not sharded (its trainable state is small): launch it data-parallel, "
                          "without --fsdp")
    return run_schedule(AccelSchedule(examples, cfg), model, tokenizer, checkpoint_dir=checkpoint_dir,
                        checkpoint_every=cfg.checkpoint_every, resume=resume, stop_after=stop_after,
                        progress=progress, procs=procs)
