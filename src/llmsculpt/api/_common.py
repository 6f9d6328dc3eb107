"""What every verb shares: loading, turning a recipe + keywords into one recipe, saving on the main
process only, and the outcome a training verb returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from llmsculpt.config import Recipe
from llmsculpt.errors import SculptError
from llmsculpt.models.loading import Loaded
from llmsculpt.models.loading import load as _load
from llmsculpt.plan import Plan

R = TypeVar("R", bound=Recipe)
RECIPE_FILE = "recipe.yaml"


def load(name: str | os.PathLike | None = None, *, device=None, dtype: str | torch.dtype | None = "auto") -> Loaded:
    """Load a model + tokenizer: built-in name, directory (pruned or not), .gguf file or hub id.

    ``dtype``: "auto" (default: the checkpoint's own; GGUF → bfloat16), bfloat16, float16 or float32;
    ``device``: "auto"/None (CUDA when present), "cpu", "cuda:N", "mps".

    Example:
        >>> loaded = load("tiny-llama")
        >>> loaded.model.config.model_type
        'llama'
    """
    return _load(name, device=device, dtype=dtype)


def recipe(cls: type[R], config: R | None, model, fields: dict) -> R:
    """``config`` (or the class's defaults) with ``fields`` laid over it; ``model`` given as a name
    or path becomes the recipe's ``model``. Unknown field names are refused by name."""
    if isinstance(model, (str, os.PathLike)):
        fields = {**fields, "model": os.fspath(model)}
    if isinstance(fields.get("dtype"), torch.dtype):
        fields["dtype"] = str(fields["dtype"]).removeprefix("torch.")
    if config is None:
        return cls.from_flags(**fields)
    if not isinstance(config, cls):
        raise SculptError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return config.with_overrides(**fields)


def model_and_tokenizer(model, tokenizer, cfg: Recipe, *, device=None, shard: bool = False, rewrites: bool = False):
    """(model, tokenizer, loaded here?) for the verb: a module passed by the caller needs its tokenizer;
    anything else is loaded from ``cfg.model`` in ``cfg.dtype`` onto this process's device (under
    torchrun/accelerate each process its own; a sharded run's host copy on the CPU). ``rewrites``: the
    verb replaces the weights (prune, accel, pretrain-prune), so host weights loaded here are copied
    out of the checkpoint's file mapping (``models.residency.own_weights``)."""
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise SculptError("pass the tokenizer along with a model object")
        return model, tokenizer, False
    from llmsculpt.run.processes import process_device

    if shard and _filled_from_the_main_process(cfg.model):
        return _skeleton(cfg.model, getattr(cfg, "dtype", "auto")), _tokenizer(cfg.model), True
    loaded = _load(cfg.model, dtype=getattr(cfg, "dtype", "auto"), device=process_device(device, shard=shard))
    if rewrites:
        from llmsculpt.models.residency import own_weights

        own_weights(loaded.model)
    return loaded.model, loaded.tokenizer, True


def _filled_from_the_main_process(name) -> bool:
    """Whether this process of a sharded (FSDP) run needs no weights of its own: any process but the
    main one, on a checkpoint directory. The shards are filled from the main process's host copy
    (run/fsdp.shard broadcasts it), so each of the others only needs the skeleton: a 70B over 8
    processes would otherwise load 141 GB on the host 8 times, to drop 7 of them at the first wrap.
    A GGUF file or a hub id is loaded as usual (its conversion or download happens everywhere)."""
    from llmsculpt.models.decilm.loader import is_nas_export
    from llmsculpt.models.loading import resolve_source
    from llmsculpt.run.processes import is_main_process, world_size_from_env

    if world_size_from_env() == 1 or is_main_process():
        return False
    kind, where = resolve_source(name)
    return kind == "dir" and not is_nas_export(where)


def _skeleton(name, dtype) -> nn.Module:
    """The model ``name`` on the meta device in the dtype the main process loads it in."""
    from llmsculpt.models.meta import meta_skeleton
    from llmsculpt.models.placement import source_dtype

    return meta_skeleton(name, source_dtype(name, dtype))


def _tokenizer(name):
    from llmsculpt.models.loading import _load_tokenizer, resolve_source

    return _load_tokenizer(resolve_source(name)[1])


def is_main() -> bool:
    """Whether this process writes outputs (always, unless launched on several processes)."""
    from llmsculpt.run.processes import is_main_process

    return is_main_process()


def note_single_process_fsdp(fsdp: bool) -> None:
    """``fsdp`` in a single process changes nothing: say so rather than ignore it silently."""
    import sys

    from llmsculpt.run.processes import world_size_from_env

    if fsdp and world_size_from_env() == 1:
        print("note: --fsdp has no effect in a single process; launch with torchrun --nproc_per_node N "
              "or accelerate launch", file=sys.stderr)


def check_out_dir(out, overwrite: bool) -> None:
    if out is not None:
        from llmsculpt.io.save import check_output_dir

        check_output_dir(out, overwrite=overwrite)


def has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


@dataclass
class TrainOutcome:
    """What a training verb (accel, pretrain_prune, finetune) returns: the trained model, its plan
    relative to the source (None if it was not pruned here or before), the report, the step log and
    the effective recipe. ``out`` is where it was saved (None: not saved, or not the main process)."""

    model: nn.Module
    tokenizer: object
    plan: Plan | None
    report: dict
    log: list[dict] = field(default_factory=list)
    recipe: Recipe | None = None
    out: Path | None = None
    source: object = None  # the architecture trained from (structures.shapes.Architecture)
