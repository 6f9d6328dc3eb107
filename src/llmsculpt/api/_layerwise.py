"""``prune(..., layer_by_layer=True)``: forward-only methods with one decoder layer resident.

A safetensors checkpoint directory is never loaded whole: the model is a skeleton on the meta device
(models/residency.py) whose layers are read from the files one at a time, for the measuring pass
(measure/layerwise.py), the planner's per-layer work, the perplexity before and after, and the save
(io/layerwise_save.py), which writes the pruned model layer by layer. Anything else (a tiny
built-in, a GGUF file, a model object) is loaded as usual and its layers are moved to the device one
at a time (``InMemory``): the plan is the same, the host holds the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from llmsculpt.errors import SculptError

LAYERWISE_METHODS = ("magnitude", "wanda-sp", "flap", "shortgpt")


def check_layerwise(cfg) -> None:
    """Refuse, before anything is loaded, what cannot run layer by layer."""
    if cfg.method not in LAYERWISE_METHODS:
        raise SculptError(f"--layer-by-layer runs forward-only methods ({', '.join(LAYERWISE_METHODS)}); "
                          f"{cfg.method} needs gradients through the whole model: drop --layer-by-layer")
    if getattr(cfg, "hidden", False):
        raise SculptError("--hidden prunes channels shared by every layer; it does not run with --layer-by-layer")


def streams_from_files(model) -> Path | None:
    """The checkpoint directory to stream layers from, or None when the model is loaded whole."""
    if isinstance(model, nn.Module) or model is None:
        return None
    from llmsculpt.models.loading import resolve_source

    kind, where = resolve_source(model)
    if kind != "dir":
        return None
    directory = Path(where)
    has_weights = (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()
    return directory if has_weights else None


class Streamed:
    """A skeleton of ``directory`` and the residency that reads its layers, with the tokenizer."""

    def __init__(self, directory: Path, *, dtype, device, lm_head: bool) -> None:
        from llmsculpt.models.loading import _load_tokenizer
        from llmsculpt.models.placement import checkpoint_dtype, parse_dtype, resolve_device
        from llmsculpt.models.residency import FromSafetensors, skeleton

        self.directory = directory
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype) or checkpoint_dtype("dir", str(directory))
        self.model = skeleton(directory, device=self.device, dtype=self.dtype, lm_head=lm_head)
        self.residency = FromSafetensors(self.model, directory, device=self.device, dtype=self.dtype)
        self.tokenizer = _load_tokenizer(str(directory))


def layerwise_perplexity(model: nn.Module, residency, tokenizer, text: str, seq_len: int, windows: int | None) -> float:
    """Perplexity with one decoder layer resident: every window goes through layer i before layer
    i+1 is loaded, in batches of 8 windows as :func:`llmsculpt.eval.perplexity.perplexity` takes them
    (the same numbers as the whole-model perplexity)."""
    from llmsculpt.eval.perplexity import perplexity
    from llmsculpt.measure.layerwise import resident_layers

    with resident_layers(model, residency, 8), torch.inference_mode():
        return perplexity(model, tokenizer, text, seq_len=seq_len, batch_size=1 << 30, max_windows=windows).ppl


def engine_for(model: nn.Module, residency=None, *, device=None, micro_batch: int | None = None):
    """The layer-by-layer engine over ``residency`` (default: the loaded ``model``'s own layers,
    moved to ``device`` one at a time)."""
    from llmsculpt.measure.layerwise import LayerwiseEngine
    from llmsculpt.models.residency import InMemory

    return LayerwiseEngine(residency or InMemory(model, device), micro_batch=micro_batch)


def output_perplexity(out: str | os.PathLike, *, device, text: str, seq_len: int, windows: int | None) -> float:
    """The saved pruned model's perplexity, read back from ``out`` one layer at a time."""
    saved = Streamed(Path(out), dtype=None, device=device, lm_head=True)
    return layerwise_perplexity(saved.model, saved.residency, saved.tokenizer, text, seq_len, windows)
