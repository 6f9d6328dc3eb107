"""Adapt-Accel: prune a little, train a little, repeat — resumable.

N phases; phase i prunes to original·P^i parameters (P = (target/original)^(1/N)) with
Adapt-Pruner (a few steps), then trains on its share of the data (linear growth by default, drawn
without replacement from one seeded shuffle). One learning-rate schedule (WSD by default) spans all
phases. After every pruning the AdamW optimiser is re-created (shapes change; see
train/trainer.py), or with ``optimizer_state="carry"`` the moments of the surviving rows and
columns are carried over (train/optim_carry.py). Checkpoints (model, optimiser, RNG-free state: the
data order is a function of the seed) are written atomically after every phase and every
``checkpoint_every`` steps to ``<out>.ckpt/``; ``resume=True`` continues from there with the same data order and schedule.
LoRA mode merges the adapters before each pruning; within a phase its checkpoints hold the phase's
frozen base (written once after the pruning) plus the adapters and optimiser state.

Launched with several processes (``torchrun``/``accelerate launch``), training is data-parallel
(DDP through accelerate, see train/distributed.py): each process trains on its slice of every global
batch, the main process alone decides each pruning and writes checkpoints and logs, and the others
apply the same plan and receive its weights. With ``shard=True`` (``--fsdp``) training is fully
sharded (FSDP2, train/sharded.py) and the main process gathers whole weights only to prune and to
checkpoint. Results equal a single-process run up to the reduction order of the averaged gradients.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from llmsculpt.config import AccelConfig, PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.methods.base import PruneContext, get_method
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.train.checkpoint import load_adapters, load_checkpoint, read_log, save_adapters, save_checkpoint
from llmsculpt.train.data import Example, collate
from llmsculpt.train.distributed import Processes
from llmsculpt.train.optim_carry import MomentShadows
from llmsculpt.train.phases import data_shares, phase_targets
from llmsculpt.train.schedule import learning_rate
from llmsculpt.train.trainer import add_lora, make_optimizer, merge_lora, train_step




class Interrupted(Exception):
    """Raised by ``stop_after`` to simulate a killed run in tests."""


def _calibration(examples: list[Example], n: int, seq_len: int, seed: int) -> torch.Tensor:
    stream = [t for e in examples for t in e.input_ids]
    if len(stream) < seq_len + 1:
        raise SculptError(f"the training data has {len(stream)} tokens, too few for calibration windows of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n,), generator=g).tolist()
    return torch.tensor([stream[s : s + seq_len] for s in starts], dtype=torch.long)


def _base_params(model) -> int:
    """Parameters of the model itself (LoRA adapters, which are merged away, not counted)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


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
    """
    from tqdm.auto import tqdm

    procs = Processes(shard=shard)
    if procs.sharded and cfg.mode == "lora":
        raise SculptError("LoRA training is not sharded (its trainable state is small): launch it data-parallel, "
                          "without --fsdp")
    if procs.device is not None and not procs.sharded:  # sharded: the plain model stays on the host
        model = model.to(procs.device)
    ckpt = Path(checkpoint_dir)
    original = count_params(model)
    arch0 = architecture(model)
    floor = arch0.min_param_count()
    if cfg.target_params <= floor:
        raise SculptError(
            f"target {cfg.target_params:,} parameters is below the smallest model structured pruning can reach "
            f"({floor:,}: embeddings plus one head and one MLP channel per layer)"
        )
    targets = phase_targets(original, cfg.target_params, cfg.phases)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    shares = data_shares(len(examples), cfg.phases, cfg.data_allocation)
    steps = [math.ceil(s / cfg.batch_size) for s in shares]
    total = sum(steps)
    if total == 0:
        raise SculptError("no training steps: the data is empty")
    teacher = None
    if cfg.distill:
        teacher = procs.wrap(copy.deepcopy(model)) if procs.sharded else copy.deepcopy(model)
        teacher.eval().requires_grad_(False)
    state = {"phase": 0, "pruned": False, "step_in_phase": 0, "global_step": 0, "plan": Plan.keep_all(arch0).to_dict(),
             "config": asdict(cfg), "original_params": original}
    log: list[dict] = []
    optimizer = None
    opt_state = None
    if resume:
        where = next(model.parameters()).device if not procs.sharded else torch.device("cpu")
        model, opt_state, state = load_checkpoint(ckpt, asdict(cfg), where)
        if cfg.mode == "lora" and state["pruned"]:  # a LoRA phase had begun on this (pruned) base
            from peft import set_peft_model_state_dict

            model = _seeded_lora(model, cfg.seed + state["phase"])
            optimizer = make_optimizer(model, cfg.lr)
            found = load_adapters(ckpt, state, device=where)
            if found is not None:
                adapters, adapter_opt, state = found
                set_peft_model_state_dict(model, adapters)
                optimizer.load_state_dict(adapter_opt)
            opt_state = None
        log = read_log(ckpt, state["global_step"])
    plan = Plan.from_dict(state["plan"])
    procs.barrier()  # every process has read the checkpoint before the main one writes the log anew
    log_file = None
    if procs.is_main:
        ckpt.mkdir(parents=True, exist_ok=True)
        log_file = open(ckpt / "log.jsonl", "w")
        for entry in log:
            log_file.write(json.dumps(entry) + "\n")
    bar = tqdm(total=total, initial=state["global_step"], desc="adapt-accel", disable=not (progress and procs.is_main))
    net = procs.wrap(model)
    if opt_state is not None:
        optimizer = make_optimizer(net, cfg.lr)
        procs.load_optimizer_state(optimizer, opt_state)
    start = 0
    try:
        for phase in range(cfg.phases):
            data = [examples[i] for i in order[start : start + shares[phase]]]
            start += shares[phase]
            if phase < state["phase"]:
                continue
            if not state["pruned"]:
                model = merge_lora(model)
                procs.sync(net, model)
                pcfg = PruneConfig(method=cfg.prune_method, target_params=targets[phase], seed=cfg.seed + phase,
                                   round_to=cfg.round_to,
                                   options={"steps": cfg.prune_steps} if cfg.prune_method == "adaptive" else {})
                calib = _calibration(data or examples, cfg.calib_samples, cfg.calib_len, cfg.seed + phase)
                carry = (_Carry(procs, model, optimizer)
                         if cfg.optimizer_state == "carry" and cfg.mode == "full" and optimizer is not None else None)
                step = None
                if count_params(model) > targets[phase]:
                    step = _prune_once(procs, net, model, tokenizer, pcfg, calib)
                    plan = plan.compose(step)
                state.update(pruned=True, step_in_phase=0, plan=plan.to_dict())
                if cfg.mode == "lora":  # the phase's frozen base; later checkpoints add only adapters
                    _checkpoint(procs, ckpt, net, model, tokenizer, None, state)
                    model = _seeded_lora(model, cfg.seed + phase)
                if step is not None or cfg.mode == "lora":
                    net = procs.wrap(model)
                if carry is None or step is not None:
                    optimizer = make_optimizer(net, cfg.lr)
                if carry is not None and step is not None:
                    carry.finish(step, model, optimizer)
            for k in range(state["step_in_phase"], steps[phase]):
                mine, scale = procs.my_share(data[k * cfg.batch_size : (k + 1) * cfg.batch_size])
                batch = collate(mine, tokenizer.pad_token_id or 0)
                g = state["global_step"]
                lr = learning_rate(cfg.schedule, g, total, lr=cfg.lr, min_lr=cfg.min_lr)
                loss = procs.mean(train_step(net, batch, optimizer, lr, teacher=teacher, temperature=cfg.temperature,
                                             distill_weight=cfg.distill_weight, loss_scale=scale))
                entry = {"step": g, "phase": phase, "loss": loss, "lr": lr, "params": _base_params(model)}
                log.append(entry)
                if log_file is not None:
                    log_file.write(json.dumps(entry) + "\n")
                    log_file.flush()
                state.update(step_in_phase=k + 1, global_step=g + 1)
                bar.update(1)
                bar.set_postfix(phase=phase + 1, loss=f"{loss:.3f}", params=f"{entry['params'] / 1e6:.1f}M")
                if stop_after is not None and state["global_step"] >= stop_after:
                    raise Interrupted(f"stopped after {stop_after} steps")
                if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
                    if cfg.mode == "full":
                        _checkpoint(procs, ckpt, net, model, tokenizer, optimizer, state)
                    else:
                        if procs.is_main:
                            save_adapters(ckpt, model, optimizer, state)
                        procs.barrier()
            if cfg.mode == "lora":
                model = merge_lora(model)
                net = procs.wrap(model)
                optimizer = None
            state.update(phase=phase + 1, pruned=False, step_in_phase=0)
            _checkpoint(procs, ckpt, net, model, tokenizer, optimizer, state)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    return model, plan, log


class _Carry:
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
        if not self.procs.sharded:
            self.shadows.carry(step, model, optimizer)
            return
        full = None
        if self.procs.is_main:
            plain = make_optimizer(model, optimizer.param_groups[0]["lr"])
            self.shadows.carry(step, model, plain)
            full = plain.state_dict()
        self.procs.load_optimizer_state(optimizer, full)


def _seeded_lora(model, seed: int):
    """LoRA adapters with a seeded initialisation, so a resumed phase starts from the same ones."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return add_lora(model)


def _checkpoint(procs: Processes, ckpt: Path, net, model, tokenizer, optimizer, state: dict) -> None:
    """The main process writes; every process waits until the checkpoint is complete."""
    procs.sync(net, model)
    opt_state = procs.optimizer_state(optimizer) if optimizer is not None else None
    if procs.is_main:
        save_checkpoint(ckpt, model, tokenizer, opt_state, state)
    procs.barrier()


def _prune_once(procs: Processes, net, model, tokenizer, pcfg: PruneConfig, calib: torch.Tensor) -> Plan:
    """Prune ``model`` in place; return the plan. With several processes the main one decides and
    the others apply its plan to their copy (or, sharded, to their meta-device skeleton); the weights
    themselves reach them when the pruned model is wrapped again (DDP or sharding copies the main
    process's). Sharded Adapt-Pruner runs on every process in lockstep, its passes on the sharded
    ``net`` (train/sharded.ShardedPasses), so no device needs the whole model and its gradients."""
    if procs.sharded and pcfg.method == "adaptive":
        from llmsculpt.train.sharded import ShardedPasses

        ctx = PruneContext(model, tokenizer, pcfg, lambda s: calib, progress=False, passes=ShardedPasses(procs, net))
        return get_method(pcfg.method)(ctx).plan
    plan = None
    if procs.is_main:
        if procs.sharded:  # other methods score the whole model on the main process's device
            model.to(procs.device)
        result = get_method(pcfg.method)(PruneContext(model, tokenizer, pcfg, lambda s: calib, progress=False))
        plan = result.plan
        if procs.sharded:
            model.to("cpu")
    if procs.world == 1:
        return plan
    plan = Plan.from_dict(procs.share(plan.to_dict() if plan is not None else None))
    if not procs.is_main:
        apply_plan(model, plan)
    shapes = procs.share(architecture(model).to_dict() if procs.is_main else None)
    if architecture(model).to_dict() != shapes:
        raise SculptError(
            f"pruning method {pcfg.method!r} changed the model beyond its plan (e.g. added biases), so the other "
            "processes cannot reproduce it; use it in a single process, or the adaptive/uniform methods"
        )
    return plan
