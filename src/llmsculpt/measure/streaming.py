"""Gradients handed on as they are produced: no scored parameter keeps a ``.grad``.

The scheme (issue 16): a parameter's gradient is complete only after the pass's last backward, and
element-wise Taylor |W·g| is not additive over micro-batches, so each parameter's gradient is
*accumulated* across the pass's backward calls (an fp32 accumulator, one per scored parameter, only
when a pass has more than one backward) and handed on — to a reducer that turns it into group
scores, or whole into ``Measurements.grad`` for a planner that needs whole gradients — in that
parameter's ``register_post_accumulate_grad_hook`` on the LAST backward, after which ``p.grad`` is
set to None. The gradient of one parameter therefore lives only while its hook runs, and a pass of
a single backward (the local engine's default for mean-gradient passes: the whole calibration batch,
affordable with checkpointed decoder layers) holds no accumulator at all.

Exactness: the accumulator adds the micro-batches' gradients in the order autograd would have added
them into ``.grad`` (g₁ + g₂ + …), so at fp32 the delivered gradient is bit for bit the old ``.grad``
and the scores are identical. With per-sample passes (Fisher) it keeps Σᵢ gᵢ² (and Σᵢ gᵢ, delivered
as the mean) exactly as the old per-sample loop did. In bf16 the accumulation is fp32 (the old
``.grad`` accumulated in bf16).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

import torch
from torch import nn


class Reducer(Protocol):
    """Turns one parameter's complete gradient (and Σᵢ gᵢ²) into named vectors (group scores).

    ``names``: the parameters it reduces (others' gradients are dropped unread); the call returns
    {key: vector}, stored by the engine as ``Measurements.reduced[key][vector_key]`` (see
    :class:`llmsculpt.importance.groups.GroupReducer`)."""

    names: set[str]

    def __call__(self, name: str, param: nn.Parameter, grad: torch.Tensor | None,
                 grad_sq: torch.Tensor | None) -> dict[str, dict]: ...


Deliver = Callable[[str, nn.Parameter, "torch.Tensor | None", "torch.Tensor | None"], None]


class GradStream:
    """Accumulates every scored parameter's gradient over a pass's backward calls and delivers it,
    complete, from the last one (see the module docstring).

    ``per_sample``: each backward is one sample's own loss (Fisher): Σ g² is kept, and with
    ``mean_grad`` also Σ g, delivered divided by ``samples``. Otherwise each backward adds its
    share of the batch's mean loss and the sum is delivered as it is. Set ``last`` before the
    final backward; ``finish`` delivers whatever a last backward did not reach."""

    def __init__(self, params: dict[str, nn.Parameter], deliver: Deliver, *, per_sample: bool = False,
                 mean_grad: bool = True, samples: int = 1) -> None:
        self.params, self.deliver = params, deliver
        self.per_sample, self.mean_grad, self.samples = per_sample, mean_grad, samples
        self.last = False
        self.acc: dict[str, torch.Tensor] = {}  # Σ g (fp32) while more backward calls are to come
        self.acc_sq: dict[str, torch.Tensor] = {}  # Σ g² (per-sample passes)
        self.done: set[str] = set()

    @contextmanager
    def hooks(self) -> Iterator["GradStream"]:
        handles = [p.register_post_accumulate_grad_hook(self._hook(n)) for n, p in self.params.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for p in self.params.values():
                p.grad = None

    def _hook(self, name: str):
        def hook(p: nn.Parameter) -> None:
            g = p.grad.detach()
            p.grad = None
            with torch.no_grad():
                self._take(name, p, g)

        return hook

    def _take(self, name: str, p: nn.Parameter, g: torch.Tensor) -> None:
        if self.per_sample:
            sq = g.pow(2)
            total_sq = self.acc_sq[name].add_(sq) if name in self.acc_sq else sq.float()
            total = (self.acc[name] + g if name in self.acc else g.float()) if self.mean_grad else None
        else:
            total_sq, total = None, self.acc[name] + g if name in self.acc else g
        if not self.last:
            if total_sq is not None:
                self.acc_sq[name] = total_sq
            if total is not None:
                self.acc[name] = total if total.dtype == torch.float32 else total.float()
            return
        self.acc.pop(name, None)
        self.acc_sq.pop(name, None)
        self.done.add(name)
        if self.per_sample and total is not None:
            total = total / self.samples
        self.deliver(name, p, total, total_sq)

    def finish(self) -> None:
        """Deliver the parameters the last backward gave no gradient (their earlier sums)."""
        for name in [n for n in self.params if n not in self.done and (n in self.acc or n in self.acc_sq)]:
            total, total_sq = self.acc.pop(name, None), self.acc_sq.pop(name, None)
            if self.per_sample and total is not None:
                total = total / self.samples
            self.deliver(name, self.params[name], total, total_sq)
            self.done.add(name)
