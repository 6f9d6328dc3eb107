"""EfficientLLM's pruning-aware (continued) pretraining as a schedule: pruning steps alternate with
training steps until the parameter budget is met, then training continues.

A cycle is ``prune_every`` pruning steps then ``train_every`` training steps (``cfg.cycle``, e.g.
"2:1"); once on budget, all remaining training steps run. Each pruning step removes about
``quantum`` of the original parameters: the mini-group type with the lowest saliency per parameter
(so the architecture designs itself) or the next type of a fixed order (methods/pruning_aware.py
decides; run/pruning.py applies). One WSD learning-rate schedule spans the training steps; both
kinds of step are logged and counted. The run engine (run/engine.py) does the rest: processes,
checkpoints every ``checkpoint_every`` steps and at the end, resuming.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from dataclasses import asdict

import torch

from llmsculpt.config import PretrainPruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.plan import Plan
from llmsculpt.run.engine import Run, run_schedule
from llmsculpt.run.events import Checkpoint, Event, PruningStep, Step, Train
from llmsculpt.run.processes import Processes
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.train.data import Example
from llmsculpt.train.schedule import learning_rate

PRUNE, TRAIN, NEW_CYCLE = "prune", "train", "new-cycle"


def next_action(*, over: bool, in_cycle: int, train_done: int, total_train: int, prune_every: int,
                train_every: int) -> str | None:
    """What the cycle does next: PRUNE, TRAIN, NEW_CYCLE (start the next cycle), or None (done).

    ``over``: the model is still above its budget; ``in_cycle``: steps taken in this cycle."""
    if not over and train_done >= total_train:
        return None
    if over and in_cycle < prune_every:
        return PRUNE
    if train_done < total_train and (not over or in_cycle < prune_every + train_every):
        return TRAIN
    return NEW_CYCLE  # cycle complete (or out of training steps)


def training_steps(original: int, cfg: PretrainPruneConfig) -> tuple[int, int]:
    """(pruning steps, training steps) of a run from ``original`` parameters to the target."""
    n_prune = math.ceil((original - cfg.target_params) / (cfg.quantum * original))
    return n_prune, math.ceil(n_prune / cfg.prune_every) * cfg.train_every + cfg.continue_steps


class PruningAwareSchedule:
    """The events of a pruning-aware training run (see the module docstring)."""

    desc = "pruning-aware training"
    counter = "step"

    def __init__(self, examples: list[Example], cfg: PretrainPruneConfig) -> None:
        if not examples:
            raise SculptError("no training data")
        self.examples, self.cfg, self.lr = examples, cfg, cfg.lr
        self.order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        self.quantum, self.total_train, self.total = 0.0, 0, 0

    def start(self, run: Run) -> dict:
        cfg = self.cfg
        original = count_params(run.model)
        arch = architecture(run.model)
        if not arch.min_param_count() < cfg.target_params < original:
            raise SculptError(f"target {cfg.target_params:,} must be between {arch.min_param_count():,} and the "
                              f"model's {original:,} parameters")
        self.quantum = cfg.quantum * original
        n_prune, self.total_train = training_steps(original, cfg)
        self.total = n_prune + self.total_train
        return {"step": 0, "train_done": 0, "prune_done": 0, "tokens": 0, "cursor": 0, "in_cycle": 0,
                "plan": Plan.keep_all(arch).to_dict(), "config": asdict(cfg)}

    def resumed(self, state: dict) -> list[Event]:
        return []

    def next_examples(self, state: dict) -> list[Example]:
        """The next global batch of the seeded order (cycled), counting its tokens."""
        n = len(self.order)
        picked = [self.examples[self.order[(state["cursor"] + k) % n]] for k in range(self.cfg.batch_size)]
        state["cursor"] += self.cfg.batch_size
        state["tokens"] += sum(len(e.input_ids) for e in picked)
        return picked

    def events(self, run: Run) -> Generator[Event, object, None]:
        cfg, state = self.cfg, run.state
        while True:
            over = count_params(run.model) > cfg.target_params
            action = next_action(over=over, in_cycle=state["in_cycle"], train_done=state["train_done"],
                                 total_train=self.total_train, prune_every=cfg.prune_every,
                                 train_every=cfg.train_every)
            if action is None:
                break
            if action == NEW_CYCLE:
                state["in_cycle"] = 0
                continue
            examples = self.next_examples(state)
            if action == PRUNE:
                entry = yield PruningStep(examples, cfg, self.quantum, state["prune_done"])
                state["prune_done"] += 1
            else:
                lr = learning_rate("wsd", state["train_done"], max(1, self.total_train), lr=cfg.lr, min_lr=cfg.min_lr)
                loss = yield Train(examples, lr)
                state["train_done"] += 1
                entry = {"type": "train", "loss": loss, "lr": lr}
            state["in_cycle"] += 1
            if over and state["in_cycle"] >= cfg.prune_every + cfg.train_every:
                state["in_cycle"] = 0
            yield Step({"tokens": state["tokens"], "params": count_params(run.model)} | entry)
        yield Checkpoint()


def pretrain_prune(
    model,
    tokenizer,
    examples: list[Example],
    cfg: PretrainPruneConfig,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    shard: bool = False,
) -> tuple[torch.nn.Module, Plan, list[dict]]:
    """Run pruning-aware training; returns (model, composed plan, trajectory log).

    With ``checkpoint_dir`` the run is checkpointed every ``checkpoint_every`` steps (pruning or
    training) and at the end; ``resume=True`` continues from the latest checkpoint with the same
    data order and schedule. Launched on several processes (torchrun / accelerate launch), gradients
    are averaged across them (DDP), the main process decides every pruning step and the others apply
    its plan; with ``shard`` (or an accelerate FSDP launch) training is fully sharded (FSDP2) and
    the main process gathers whole weights and gradients for each pruning step.

    Example::

        model, plan, log = pretrain_prune(model, tokenizer, examples,
                                          PretrainPruneConfig(target_params="60M", cycle="2:1"))
    """
    schedule = PruningAwareSchedule(examples, cfg)
    if resume and checkpoint_dir is None:
        raise SculptError("resume needs the checkpoint directory")
    return run_schedule(schedule, model, tokenizer, checkpoint_dir=checkpoint_dir,
                        checkpoint_every=checkpoint_every, resume=resume, stop_after=stop_after,
                        progress=progress, procs=Processes(shard=shard))
