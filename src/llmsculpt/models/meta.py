"""A model built on the meta device from its ``config.json`` alone: shapes without weights.

``sculpt estimate`` and ``sculpt inspect`` read architectures this way, so an 8B checkpoint (or a
directory holding only its config) costs nothing to describe. :func:`check_weight_shapes` compares
the meta model with the shapes in the safetensors headers, so a config that disagrees with the
weights it sits beside is reported, not described wrongly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from llmsculpt.errors import SculptError


def meta_model(name: str | os.PathLike) -> nn.Module:
    """The model ``name`` names (tiny built-in, directory, GGUF, or hub id: config only), every tensor
    on the meta device. A GGUF file is converted (once, cached) to find its Hugging Face config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmsculpt.models.loading import _convert_gguf_cached, _read_config, hub_unreachable, resolve_source
    from llmsculpt.models.sculpt_modeling import SCULPT_CLASSES

    kind, where = resolve_source(name)
    if kind == "tiny":
        from llmsculpt.testing.tiny import tiny_model

        config = tiny_model(where).config  # tiny: built in memory anyway
    elif kind == "hub":
        why = hub_unreachable()
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=why is not None)  # config.json only
        except Exception as exc:
            raise SculptError(f"could not read the config of {where!r} from the hub: "
                              f"{str(exc).strip().splitlines()[0]}; download it (config only is enough)") from None
    else:
        config = _read_config(str(_convert_gguf_cached(Path(where)) if kind == "gguf" else where))
    base = getattr(config, "sculpt_base_model_type", None)
    with torch.device("meta"):
        if base:
            return SCULPT_CLASSES[base][1](config)
        return AutoModelForCausalLM.from_config(config)


def meta_skeleton(name: str | os.PathLike, dtype: torch.dtype) -> nn.Module:
    """:func:`meta_model` in ``dtype``, in eval mode, with its rotary tables computed in fp32 on the
    CPU (as a loaded model keeps them): the plain model of a process whose weights live elsewhere
    (shards, or the main process's host copy)."""
    from llmsculpt.models.placement import fp32_rotary

    model = fp32_rotary(meta_model(name).to(dtype), "cpu").eval()
    model.config.dtype = dtype
    return model


def check_weight_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], *, where: str) -> None:
    """Refuse when the weights' shapes (``shapes``, from the safetensors headers) disagree with the
    model built from the config: the first differing tensor is named, with both shapes."""
    if not shapes:
        return
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    common = expected.keys() & shapes.keys()
    if not common:
        raise SculptError(f"{where}: none of the tensors in the safetensors files is a tensor of the model "
                          f"config.json describes (e.g. {next(iter(shapes))!r}); is the config from another model?")
    for name in sorted(common):
        if expected[name] != shapes[name]:
            raise SculptError(f"{where}: config.json disagrees with the weights: {name} is {list(shapes[name])} in "
                              f"the safetensors files, {list(expected[name])} by the config")
