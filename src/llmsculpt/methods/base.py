"""What every planner receives and returns, the method registry, and the two verbs over them.

A method is a *planner*: measurements in (through ``ctx.engine``), a :class:`~llmsculpt.plan.Plan`
out. It never modifies ``ctx.model`` unless ``ctx.inplace``; an iterative planner (adaptive)
prunes a working copy step by step (``ctx.model`` itself when ``inplace``) and returns it as
``working``. ``prune_model`` plans and then applies the plan, to ``ctx.model`` if ``inplace`` or to a
copy. Each method declares its options as a dataclass; :func:`check_options` turns
``PruneConfig.options`` into it, rejecting unknown keys by name.

Example:
    >>> from llmsculpt.config import PruneConfig
    >>> from llmsculpt.testing import tiny_model
    >>> import torch
    >>> calib = lambda seed: torch.randint(4, 128, (4, 32), generator=torch.Generator().manual_seed(seed))
    >>> ctx = PruneContext(tiny_model(), None, PruneConfig(method="uniform", ratio=0.2), calib)
    >>> result = get_method("uniform").plan(ctx)   # ctx.model is unchanged
    >>> model, result = prune_model(ctx)          # a pruned copy
    >>> model is ctx.model
    False
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from torch import nn

from llmsculpt.config import PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.measure import LocalEngine
from llmsculpt.plan import Plan
from llmsculpt.registry import Registry


@dataclass
class PruneContext:
    model: nn.Module
    tokenizer: object
    config: PruneConfig
    calibration: Callable[[int], torch.Tensor]  # seed -> LongTensor [n_samples, seq_len]
    progress: bool = False
    engine: object = field(default_factory=LocalEngine)  # LocalEngine or measure.sharded.ShardedEngine
    inplace: bool = False
    calib_text: str | None = None  # the caller's calibration text, when ``calibration`` draws from one


@dataclass
class PruneResult:
    plan: Plan  # relative to ctx.model as it was given
    history: dict = field(default_factory=dict)
    working: nn.Module | None = None  # the pruned model, when the planner pruned one on its way


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


@dataclass(frozen=True)
class Method:
    """A registered planner: ``plan(ctx)`` and the dataclass its options parse into."""

    name: str
    planner: Callable[[PruneContext], PruneResult]
    options: type = NoOptions

    def plan(self, ctx: PruneContext) -> PruneResult:
        from llmsculpt.allocation.serving import check_servable

        cfg = ctx.config  # --serve: what no plan of this method could serve is refused before measuring
        check_servable(ctx.model, cfg.serve, method=self.name, layers=cfg.layers, attention=cfg.attention, mlp=cfg.mlp)
        return self.planner(ctx)


METHODS: Registry[Method] = Registry("pruning method")


def register(name: str, options: type = NoOptions):
    """Register ``fn(ctx) -> PruneResult`` as method ``name`` with its options dataclass."""

    def deco(fn: Callable[[PruneContext], PruneResult]):
        METHODS.add(name, Method(name, fn, options))
        return fn

    return deco


# modules that register methods; imported on first lookup so `import llmsculpt` stays lean
_METHOD_MODULES = (
    "llmsculpt.methods.uniform",
    "llmsculpt.methods.adaptive",
    "llmsculpt.methods.flap",
    "llmsculpt.methods.layer_removal",
    "llmsculpt.methods.sample_aware",
)


def _registered() -> Registry[Method]:
    for module in _METHOD_MODULES:
        importlib.import_module(module)
    return METHODS


def get_method(name: str) -> Method:
    return _registered().get(name)


def method_names() -> list[str]:
    return _registered().names()


def check_options(name: str, options: dict | None):
    """``options`` as method ``name``'s options dataclass; unknown keys raise SculptError naming
    them and listing the known ones (validation of values happens in the dataclass)."""
    cls = get_method(name).options
    options = dict(options or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none (it takes no options)"
        raise SculptError(f"unknown {name} options: {', '.join(unknown)}; known: {listed}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise SculptError(f"{name} options: {exc}") from None


def prune_model(ctx: PruneContext) -> tuple[nn.Module, PruneResult]:
    """Plan with ``ctx.config.method``, then apply: the planner's working model if it returned one,
    else the plan applied to ``ctx.model`` (``inplace``) or to a copy of it."""
    from llmsculpt.surgery import apply_plan

    result = get_method(ctx.config.method).plan(ctx)
    if result.working is not None:
        return result.working, result
    model = ctx.model if ctx.inplace else copy.deepcopy(ctx.model)
    return apply_plan(model, result.plan), result


def working_copy(ctx: PruneContext) -> nn.Module:
    """The model an iterative planner may prune: ``ctx.model`` itself only when ``inplace``."""
    return ctx.model if ctx.inplace else copy.deepcopy(ctx.model)
