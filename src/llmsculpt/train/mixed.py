"""Mixed-precision AdamW: bf16/fp16 weights, fp32 master weights and fp32 moments.

A bf16 weight cannot take a small update: 1e-4 relative is below its resolution (≈ 4e-3), so plain
AdamW on bf16 parameters silently loses most steps. ``MixedAdamW`` keeps an fp32 *master* copy of
every low-precision trainable parameter and runs AdamW on the masters; after each step
the weights the model computes with are the masters rounded to the working dtype. The model itself
stays in bf16 for the forward/backward, the measuring passes, surgery and saving.

Why masters beside bf16 weights rather than fp32 weights under autocast: the weights every other
part of a run touches (scoring, pruning, checkpoints, the saved model) stay in the working dtype, and
the training state costs the same or less. Per trainable parameter, at the peak of a step:

=====================  ======================================  ============================
                       fp32 weights (plain AdamW)              bf16 weights (MixedAdamW)
=====================  ======================================  ============================
weights                4                                       2
gradient               4                                       2
master                 —                                       4
AdamW moments          8                                       8
total                  16 (12 between steps)                   16 (14 between steps)
=====================  ======================================  ============================

The gradient is never held in fp32 for the whole model: the norm for clipping is computed one
parameter at a time in fp32, and each parameter is then stepped on its own, in row chunks (the
chunk's gradient upcast and clipped, torch's AdamW formula applied to the master, the weight
rounded from it), the bf16 gradient freed after it. fp32 parameters (e.g. LoRA adapters) are
stepped by torch's AdamW itself. fp16 weights also get a dynamic loss scale
(grown ×2 after ``GROWTH_INTERVAL`` clean steps, halved and the step skipped on an overflow).

State layout: ``state_dict()`` is indexed like a plain AdamW over the same parameters, each
low-precision parameter's entry carrying its master under ``"master"`` (plus ``"loss_scale"`` at the
top level for fp16), so checkpoints (run/checkpoint.py), sharded gathers (run/fsdp.py) and the
moments carried across a pruning (train/optim_carry.py) handle it like any other state. A state dict
without masters (an fp32 run's, or an older checkpoint's) loads too: masters then start from the
weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)
CHUNK = 1 << 22  # elements per row chunk of a master's step (16 MB of fp32 temporaries)
GROWTH_INTERVAL = 2000  # fp16: clean steps before the loss scale doubles (torch.amp.GradScaler's default)


def needs_master(p: torch.Tensor) -> bool:
    return p.dtype in LOW_PRECISION


class MixedAdamW(torch.optim.AdamW):
    """AdamW over fp32 masters of low-precision parameters (others are stepped as they are).

    ``clip_grad_norm_(max_norm)`` after backward returns the fp32 gradient norm and sets the clipping
    factor the next ``step()`` applies; train_step calls both. ``loss_scale``: what to multiply the
    loss by before backward (1 unless some weights are fp16).
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0) -> None:
        self.weights = [p for p in params]
        self.masters = [p.detach().float() if needs_master(p) else None for p in self.weights]
        super().__init__([m if m is not None else p for p, m in zip(self.weights, self.masters)], lr=lr,
                         weight_decay=weight_decay)
        fp16 = any(p.dtype == torch.float16 for p in self.weights)
        self.loss_scale = 2.0**16 if fp16 else 1.0
        self._good_steps = 0
        self._coef: float | None = None
        self._overflow = False

    # ---- gradients ------------------------------------------------------------------------------
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """The total 2-norm of the (unscaled) gradients, computed in fp32 one parameter at a time;
        the next ``step`` multiplies each gradient by min(1, max_norm / (norm + 1e-6)) (as
        torch.nn.utils.clip_grad_norm_ does). On an fp16 overflow the norm is inf and the step is
        skipped instead of taken."""
        squares = torch.zeros((), dtype=torch.float32)
        for p in self.weights:
            if p.grad is not None:
                n = torch.linalg.vector_norm(p.grad, dtype=torch.float32)
                if hasattr(n, "full_tensor"):  # a sharded (DTensor) gradient's norm is partial
                    n = n.full_tensor()
                squares = squares + n.cpu() ** 2
        norm = squares.sqrt() / self.loss_scale
        self._overflow = self.loss_scale != 1.0 and not math.isfinite(float(norm))
        self._coef = float(torch.clamp(max_norm / (norm + 1e-6), max=1.0)) / self.loss_scale
        return norm

    @property
    def skipping(self) -> bool:
        """The gradients overflowed at the current fp16 loss scale: the next step only lowers it."""
        return self._overflow

    # ---- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("MixedAdamW.step takes no closure")
        coef = 1.0 if self._coef is None else self._coef
        self._coef = None
        if self._overflow:
            self._overflow = False
            self.zero_grad(set_to_none=True)
            self.loss_scale /= 2
            self._good_steps = 0
            return None
        plain = [q for q, m in zip(self.weights, self.masters) if m is None and q.grad is not None]
        if plain:
            for q in plain:
                q.grad.mul_(coef)
            with self._only(set(map(id, plain))):
                super().step()
        groups = {id(q): g for g in self.param_groups for q in g["params"]}
        for p, m in zip(self.weights, self.masters):
            if m is None or p.grad is None:
                continue
            self._step_master(p, m, groups[id(m)], coef)
            p.grad = None
        if self.loss_scale != 1.0:
            self._good_steps += 1
            if self._good_steps >= GROWTH_INTERVAL:
                self.loss_scale *= 2
                self._good_steps = 0
        return None

    def _step_master(self, p: torch.Tensor, m: torch.Tensor, group: dict, coef: float) -> None:
        """torch's AdamW update of the master ``m`` from ``p``'s low-precision gradient, in row
        chunks, so no full-size fp32 temporary (gradient, denominator) exists; then ``p`` = ``m``
        rounded. Element-wise, so a sharded parameter is stepped on its local shard."""
        if group["amsgrad"] or group["maximize"]:
            raise NotImplementedError("MixedAdamW supports plain AdamW (no amsgrad, no maximize)")
        state = self.state[m]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(m, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(m, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        step_size = lr / (1 - beta1**step)
        bc2_sqrt = math.sqrt(1 - beta2**step)
        local = [t.to_local() if hasattr(t, "to_local") else t
                 for t in (m, p.grad.contiguous(), state["exp_avg"], state["exp_avg_sq"], p.data)]
        master, grad, exp_avg, exp_avg_sq, weight = (t.view(t.shape[0], -1) if t.dim() else t.view(1, 1)
                                                     for t in local)  # views: written in place
        rows = max(1, CHUNK // max(1, master.shape[1]))
        for i in range(0, master.shape[0], rows):
            w, a, s = master[i : i + rows], exp_avg[i : i + rows], exp_avg_sq[i : i + rows]
            g = grad[i : i + rows].to(torch.float32).mul_(coef)
            w.mul_(1 - lr * wd)
            a.lerp_(g, 1 - beta1)
            s.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            w.addcdiv_(a, (s.sqrt() / bc2_sqrt).add_(eps), value=-step_size)
            weight[i : i + rows].copy_(w)

    @contextmanager
    def _only(self, keep: set[int]) -> Iterator[None]:
        """Hide every parameter but those in ``keep`` from torch's AdamW step."""
        saved = [g["params"] for g in self.param_groups]
        for g in self.param_groups:
            g["params"] = [q for q in g["params"] if id(q) in keep]
        try:
            yield
        finally:
            for g, params in zip(self.param_groups, saved):
                g["params"] = params

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for p in self.weights:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = super().state_dict()
        for index, m in enumerate(self.masters):
            if m is not None:
                sd["state"].setdefault(index, {})["master"] = m
        if self.loss_scale != 1.0:
            sd["loss_scale"] = [self.loss_scale, self._good_steps]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state = {i: dict(s) for i, s in state_dict["state"].items()}
        masters = {i: s.pop("master") for i, s in state.items() if "master" in s}
        rest = {k: v for k, v in state_dict.items() if k != "loss_scale"}
        super().load_state_dict({**rest, "state": {i: s for i, s in state.items() if s}})
        with torch.no_grad():
            for index, m in enumerate(self.masters):
                if m is None:
                    continue
                if index in masters:
                    m.copy_(masters[index].to(m.device))
                else:  # no master saved (an fp32 run's or an older checkpoint's): start from the weight
                    m.copy_(self.weights[index].float())
        if "loss_scale" in state_dict:
            self.loss_scale, self._good_steps = float(state_dict["loss_scale"][0]), int(state_dict["loss_scale"][1])

    def master_of(self, p: torch.Tensor) -> torch.Tensor | None:
        """The fp32 master of the model parameter ``p`` (None if ``p`` is stepped as it is)."""
        for q, m in zip(self.weights, self.masters):
            if q is p:
                return m
        return None
