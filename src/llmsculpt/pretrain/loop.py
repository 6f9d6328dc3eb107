"""The pruning-aware training loop: pruning steps alternate with training steps until the
parameter budget is met; each pruning step removes the mini-group type with the lowest saliency
per parameter (so the architecture designs itself), or follows a fixed type order (ablations).

With ``round_to`` > 1 a step's widths are multiples (pretrain/groups.py), so a step can free more
than its quantum. A step then chooses among the types whose step still fits in the parameters
left above the target, or, if none fits, takes the type that overshoots least."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from llmsculpt.config import PretrainPruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.plan import Plan
from llmsculpt.pretrain.groups import candidates, plan_for
from llmsculpt.pretrain.obs import apply_obs, input_hessians
from llmsculpt.pretrain.saliency import HESSIAN_METRICS, saliency, unit_params
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.train.checkpoint import load_checkpoint, read_log, save_checkpoint
from llmsculpt.train.data import Example, collate
from llmsculpt.train.distributed import Processes
from llmsculpt.train.schedule import learning_rate
from llmsculpt.train.trainer import make_optimizer, train_step




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
):
    """Run pruning-aware training; returns (model, composed plan, trajectory log).

    With ``checkpoint_dir`` the run is checkpointed every ``checkpoint_every`` steps (pruning or
    training) and at the end; ``resume=True`` continues from the latest checkpoint with the same
    data order and schedule. Launched on several processes (torchrun / accelerate launch), gradients
    are averaged across them (DDP), the main process decides every pruning step (its saliency is the
    all-reduced one) and the others apply its plan; see train/distributed.py. With ``shard`` (or an
    accelerate FSDP launch) training is fully sharded (FSDP2): every pruning step gathers whole weights
    and gradients on the main process, which decides, and re-shards the pruned model from it.
    """
    from tqdm.auto import tqdm

    if not examples:
        raise SculptError("no training data")
    if resume and checkpoint_dir is None:
        raise SculptError("resume needs the checkpoint directory")
    procs = Processes(shard=shard)
    if procs.device is not None and not procs.sharded:  # sharded: the plain model stays on the host
        model = model.to(procs.device)
    original = count_params(model)
    arch0 = architecture(model)
    if not arch0.min_param_count() < cfg.target_params < original:
        raise SculptError(
            f"target {cfg.target_params:,} must be between {arch0.min_param_count():,} and the model's {original:,} parameters"
        )
    quantum = cfg.quantum * original
    n_prune = math.ceil((original - cfg.target_params) / quantum)
    total_train = math.ceil(n_prune / cfg.prune_every) * cfg.train_every + cfg.continue_steps
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    config = asdict(cfg)
    state = {"step": 0, "train_done": 0, "prune_done": 0, "tokens": 0, "cursor": 0, "in_cycle": 0,
             "plan": Plan.keep_all(arch0).to_dict(), "config": config}
    log: list[dict] = []
    opt_state = None
    if resume:
        where = torch.device("cpu") if procs.sharded else next(model.parameters()).device
        model, opt_state, state = load_checkpoint(ckpt, config, where)
        log = read_log(ckpt, state["step"])
    procs.barrier()
    log_file = None
    if ckpt is not None and procs.is_main:
        ckpt.mkdir(parents=True, exist_ok=True)
        log_file = open(ckpt / "log.jsonl", "w")
        log_file.writelines(json.dumps(e) + "\n" for e in log)
    device = procs.device if procs.device is not None else next(model.parameters()).device
    plan = Plan.from_dict(state["plan"])
    net = procs.wrap(model)
    optimizer = make_optimizer(net, cfg.lr)
    if opt_state is not None:
        procs.load_optimizer_state(optimizer, opt_state)

    def next_batch():
        picked = [examples[order[(state["cursor"] + k) % len(order)]] for k in range(cfg.batch_size)]
        state["cursor"] += cfg.batch_size
        mine, scale = procs.my_share(picked)
        batch = collate(mine, tokenizer.pad_token_id or 0)
        state["tokens"] += sum(len(e.input_ids) for e in picked)
        return {k: v.to(device) for k, v in batch.items()}, scale

    def record(entry: dict) -> None:
        log.append(entry)
        state["step"] += 1
        bar.update(1)
        if log_file is not None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()

    def checkpoint() -> None:
        procs.sync(net, model)
        opt_state = procs.optimizer_state(optimizer)
        if procs.is_main:
            save_checkpoint(ckpt, model, tokenizer, opt_state, state | {"plan": plan.to_dict()})
        procs.barrier()

    bar = tqdm(total=n_prune + total_train, initial=state["step"], desc="pruning-aware training",
               disable=not (progress and procs.is_main))
    try:
        while True:
            over = count_params(model) > cfg.target_params
            if not over and state["train_done"] >= total_train:
                break
            # a cycle: prune_every pruning steps, then train_every training steps (all the rest once on budget)
            pruning = over and state["in_cycle"] < cfg.prune_every
            if pruning:
                step_plan, entry = _pruning_step(procs, net, model, cfg, quantum, next_batch, state)
                plan = plan.compose(step_plan)
                net = procs.wrap(model)
                optimizer = make_optimizer(net, cfg.lr)  # shapes changed; stale moments dropped
                state["prune_done"] += 1
                state["in_cycle"] += 1
            elif state["train_done"] < total_train and (not over or state["in_cycle"] < cfg.prune_every + cfg.train_every):
                batch, scale = next_batch()
                lr = learning_rate("wsd", state["train_done"], max(1, total_train), lr=cfg.lr, min_lr=cfg.min_lr)
                loss = procs.mean(train_step(net, batch, optimizer, lr, loss_scale=scale))
                state["train_done"] += 1
                state["in_cycle"] += 1
                entry = {"type": "train", "loss": loss, "lr": lr}
            else:
                state["in_cycle"] = 0  # cycle complete (or out of training steps): start the next one
                continue
            if over and state["in_cycle"] >= cfg.prune_every + cfg.train_every:
                state["in_cycle"] = 0
            record({"step": state["step"], "tokens": state["tokens"], "params": count_params(model)} | entry)
            if stop_after is not None and state["step"] >= stop_after:
                raise Interrupted(f"stopped after {stop_after} steps")
            if ckpt is not None and checkpoint_every and state["step"] % checkpoint_every == 0:
                checkpoint()
        if ckpt is not None:
            checkpoint()
        else:
            procs.sync(net, model)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    return model, plan, log


class Interrupted(Exception):
    """Raised by ``stop_after`` to simulate a killed run in tests."""


def _pruning_step(procs: Processes, net, model, cfg: PretrainPruneConfig, quantum: float, next_batch, state: dict):
    """One pruning step on ``model`` in place; returns (the step's plan, its log entry)."""
    params = count_params(model)
    arch = architecture(model)
    batch, scale = next_batch()
    net.zero_grad(set_to_none=True)
    watched = net if procs.sharded else model  # the modules that run (DDP runs model's own)
    with input_hessians(watched, cfg.obs or cfg.metric in HESSIAN_METRICS, inputs=cfg.metric in HESSIAN_METRICS) as hess:
        loss = net(**batch, use_cache=False).loss * scale
    loss.backward()
    procs.sync(net, model, grads=True)  # sharded: whole weights and gradients on the main process
    loss = procs.mean(float(loss.item()))
    hess = procs.sum_over_processes(dict(hess))  # the whole batch's X Xᵀ
    decision = None
    if procs.is_main:
        sal = saliency(model, arch, cfg.metric, hessians=hess)
        budget = min(quantum, params - cfg.target_params)
        allowed = [t for t in cfg.types if not (t == "stem" and arch.hidden <= 1)]
        options = {t: candidates(sal, arch, t, budget, round_to=cfg.round_to) for t in allowed}
        if cfg.fixed_order:
            kind = cfg.fixed_order[state["prune_done"] % len(cfg.fixed_order)]
            if kind not in options:
                options[kind] = candidates(sal, arch, kind, budget, round_to=cfg.round_to)
        else:
            usable = [t for t in options if options[t][0]]
            if not usable:
                raise SculptError("nothing left to prune: every layer is down to one head and one channel")
            if cfg.round_to > 1:  # multiples make steps coarse: keep to types whose step fits what is left
                size = unit_params(arch)
                freed = {t: len(options[t][0]) * size[t] for t in usable}
                fits = [t for t in usable if freed[t] <= params - cfg.target_params]
                usable = fits or [min(usable, key=lambda t: (freed[t], options[t][1]))]
            kind = min(usable, key=lambda t: options[t][1])
        decision = (kind, options[kind][0], {t: options[t][1] for t in options})
    model.zero_grad(set_to_none=True)
    net.zero_grad(set_to_none=True)
    kind, units, scores = procs.share(decision)
    if cfg.obs and kind in ("attention", "mlp") and procs.is_main:  # the others receive the weights when re-wrapped
        apply_obs(model, arch, kind, [tuple(u) for u in units], hess)
    step_plan = plan_for(arch, kind, [tuple(u) for u in units])
    apply_plan(model, step_plan)
    entry = {"loss": loss, "type": kind, "removed": len(units), "saliency": scores}
    return step_plan, entry
