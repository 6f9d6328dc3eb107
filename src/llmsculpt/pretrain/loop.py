"""The pruning-aware training loop: pruning steps alternate with training steps until the
parameter budget is met; each pruning step removes the mini-group type with the lowest saliency
per parameter (so the architecture designs itself), or follows a fixed type order (ablations)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import spec_for
from llmsculpt.plan import Plan
from llmsculpt.pretrain.obs import obs_remove_columns
from llmsculpt.pretrain.saliency import TYPES, Saliency, saliency, unit_params
from llmsculpt.structures.shapes import Architecture, architecture, count_params
from llmsculpt.surgery import apply_plan
from llmsculpt.train.data import Example, collate
from llmsculpt.train.schedule import learning_rate
from llmsculpt.train.trainer import make_optimizer, train_step


@dataclass
class PretrainPruneConfig:
    target_params: int
    ratio: str = "1:1"  # pruning steps : training steps
    quantum: float = 0.02  # fraction of the original parameters removed per pruning step
    metric: str = "taylor"
    types: tuple[str, ...] = TYPES
    fixed_order: tuple[str, ...] | None = None  # e.g. ("stem", "attention", "mlp"), cycled
    obs: bool = False
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-5
    continue_steps: int = 0
    seed: int = 0

    def __post_init__(self):
        try:
            self.prune_every, self.train_every = (int(x) for x in self.ratio.split(":"))
        except ValueError:
            raise SculptError(f"ratio must look like 4:1 (pruning:training steps), got {self.ratio!r}") from None
        if self.prune_every < 1 or self.train_every < 0 or not 0 < self.quantum < 1:
            raise SculptError("need at least one pruning step per cycle and 0 < quantum < 1")
        bad = set(self.types) - set(TYPES) | set(self.fixed_order or ()) - set(TYPES)
        if bad:
            raise SculptError(f"unknown mini-group types {sorted(bad)}; choose from {', '.join(TYPES)}")


def _lowest_until(scores: list[tuple[float, tuple]], budget: float, size: float, limit_ok) -> tuple[list[tuple], float]:
    """Take the lowest-scored units (respecting ``limit_ok``) until ``budget`` parameters."""
    taken, total = [], 0.0
    for value, key in sorted(scores, key=lambda s: s[0]):
        if total >= budget:
            break
        if not limit_ok(key, taken):
            continue
        taken.append(key)
        total += size
    mean = sum(v for v, k in scores if k in set(taken)) / max(1, len(taken))
    return taken, mean


def candidates(sal: Saliency, arch: Architecture, kind: str, budget: float) -> tuple[list[tuple], float]:
    """The units of ``kind`` a pruning step would remove, and their mean saliency per parameter."""
    size = unit_params(arch)[kind]
    if kind == "attention":
        scores = [(float(v), (i, h)) for i, t in enumerate(sal.heads) for h, v in enumerate(t.tolist())]
        per_layer = {i: ls.n_heads for i, ls in enumerate(arch.layers)}
        ok = lambda key, taken: sum(1 for k in taken if k[0] == key[0]) < per_layer[key[0]] - 1  # noqa: E731
    elif kind == "mlp":
        scores = [(float(v), (i, c)) for i, t in enumerate(sal.mlp) for c, v in enumerate(t.tolist())]
        per_layer = {i: ls.mlp for i, ls in enumerate(arch.layers)}
        ok = lambda key, taken: sum(1 for k in taken if k[0] == key[0]) < per_layer[key[0]] - 1  # noqa: E731
    else:
        scores = [(float(v), (d,)) for d, v in enumerate(sal.stem.tolist())]
        ok = lambda key, taken: len(taken) < arch.hidden - 1  # noqa: E731
    return _lowest_until(scores, budget, size, ok)


def plan_for(arch: Architecture, kind: str, units: list[tuple]) -> Plan:
    """The plan removing ``units`` of one mini-group type. Heads go one by one (cluster attention):
    a K/V head stays while any of its query heads does."""
    plan = Plan.keep_all(arch)
    if kind == "stem":
        gone = {u[0] for u in units}
        plan.hidden = [d for d in range(arch.hidden) if d not in gone]
        return plan
    for i, ls in enumerate(arch.layers):
        gone = {u[1] for u in units if u[0] == i}
        if not gone:
            continue
        lp = plan.layers[i]
        if kind == "attention":
            lp.heads = [h for h in range(ls.n_heads) if h not in gone]
            lp.kv_heads = sorted({ls.kv_map[h] for h in lp.heads})
        else:
            lp.mlp = [c for c in range(ls.mlp) if c not in gone]
    return plan


@contextmanager
def input_hessians(model, enabled: bool):
    """H = Σ x xᵀ of every o_proj and down_proj input during the forward passes inside."""
    spec = spec_for(model)
    store: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def make(key):
        def hook(_m, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            store[key] = store.get(key, 0) + (x.T @ x).cpu()

        return hook

    if enabled:
        for i, layer in enumerate(spec.decoder_layers(model)):
            _, _, _, o = spec.qkvo(layer)
            _, _, down = spec.gate_up_down(layer)
            handles += [o.register_forward_pre_hook(make((i, "o"))), down.register_forward_pre_hook(make((i, "down")))]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def apply_obs(model, arch: Architecture, kind: str, units: list[tuple], hessians: dict) -> None:
    """Compensate the remaining o_proj/down_proj columns for the columns about to be removed."""
    spec = spec_for(model)
    hd = arch.head_dim
    for i, layer in enumerate(spec.decoder_layers(model)):
        gone = sorted(u[1] for u in units if u[0] == i)
        if not gone:
            continue
        _, _, _, o = spec.qkvo(layer)
        _, _, down = spec.gate_up_down(layer)
        lin, key = (o, (i, "o")) if kind == "attention" else (down, (i, "down"))
        cols = [h * hd + d for h in gone for d in range(hd)] if kind == "attention" else gone
        lin.weight.copy_(obs_remove_columns(lin.weight, hessians[key].to(lin.weight.device), cols))


def pretrain_prune(model, tokenizer, examples: list[Example], cfg: PretrainPruneConfig, *, progress: bool = True):
    """Run pruning-aware training; returns (model, composed plan, trajectory log)."""
    from tqdm.auto import tqdm

    if not examples:
        raise SculptError("no training data")
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
    cursor = 0

    def next_batch():
        nonlocal cursor
        picked = [examples[order[(cursor + k) % len(order)]] for k in range(cfg.batch_size)]
        cursor += cfg.batch_size
        return collate(picked, tokenizer.pad_token_id or 0)

    device = next(model.parameters()).device
    plan = Plan.keep_all(arch0)
    optimizer = make_optimizer(model, cfg.lr)
    log, step, train_done, tokens, prune_done = [], 0, 0, 0, 0
    bar = tqdm(total=n_prune + total_train, desc="pruning-aware training", disable=not progress)
    while count_params(model) > cfg.target_params or train_done < total_train:
        for _ in range(cfg.prune_every):
            params = count_params(model)
            if params <= cfg.target_params:
                break
            arch = architecture(model)
            batch = {k: v.to(device) for k, v in next_batch().items()}
            tokens += int(batch["attention_mask"].sum())
            model.zero_grad(set_to_none=True)
            with input_hessians(model, cfg.obs) as hess:
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            sal = saliency(model, arch, cfg.metric)
            model.zero_grad(set_to_none=True)
            budget = min(quantum, params - cfg.target_params)
            allowed = [t for t in cfg.types if not (t == "stem" and arch.hidden <= 1)]
            options = {t: candidates(sal, arch, t, budget) for t in allowed}
            if cfg.fixed_order:
                kind = cfg.fixed_order[prune_done % len(cfg.fixed_order)]
                if kind not in options:
                    options[kind] = candidates(sal, arch, kind, budget)
            else:
                usable = [t for t in options if options[t][0]]
                if not usable:
                    raise SculptError("nothing left to prune: every layer is down to one head and one channel")
                kind = min(usable, key=lambda t: options[t][1])
            units = options[kind][0]
            if cfg.obs and kind in ("attention", "mlp"):
                apply_obs(model, arch, kind, units, hess)
            step_plan = plan_for(arch, kind, units)
            apply_plan(model, step_plan)
            plan = plan.compose(step_plan)
            optimizer = make_optimizer(model, cfg.lr)  # shapes changed; stale moments dropped
            prune_done += 1
            log.append({"step": step, "tokens": tokens, "loss": loss.item(), "params": count_params(model), "type": kind,
                        "removed": len(units), "saliency": {t: options[t][1] for t in options}})
            step += 1
            bar.update(1)
        for _ in range(cfg.train_every if count_params(model) > cfg.target_params else total_train - train_done):
            if train_done >= total_train:
                break
            batch = next_batch()
            tokens += int(batch["attention_mask"].sum())
            lr = learning_rate("wsd", train_done, max(1, total_train), lr=cfg.lr, min_lr=cfg.min_lr)
            loss = train_step(model, batch, optimizer, lr)
            log.append({"step": step, "tokens": tokens, "loss": loss, "params": count_params(model), "type": "train", "lr": lr})
            train_done += 1
            step += 1
            bar.update(1)
        if cfg.train_every == 0 and count_params(model) <= cfg.target_params:
            break
    bar.close()
    return model, plan, log
