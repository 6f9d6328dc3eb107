"""``llmsculpt.load`` of a ``sculpt export --format vllm`` directory in the Nemotron-NAS layout.

The export pads each layer's query heads to one global count (zero q rows, zero o_proj columns) and
groups K/V heads for vLLM; it also records the pruned model's own config (``sculpt_source_config``).
From that config the layout is recomputed (io/export_vllm.layer_layout is deterministic) and undone:
padding slots dropped, each query head and K/V head taken from where the export put it, so the
loaded model is the pruned model itself (same shapes, same parameter count, same logits), and it can
be evaluated, re-pruned or exported again like any llmsculpt directory. (This file is not among the
files copied beside an export.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llmsculpt.errors import SculptError

NAS_TYPE = "nemotron-nas"
SOURCE_KEY = "sculpt_source_config"


def nas_source_config(raw: dict, where: str):
    """The pruned model's config recorded in a Nemotron-NAS export (``raw`` is its config.json)."""
    from transformers import AutoConfig

    from llmsculpt.models.sculpt_modeling import SCULPT_CLASSES

    src = raw.get(SOURCE_KEY)
    if not isinstance(src, dict):
        raise SculptError(f"{where}: a Nemotron-NAS directory not written by llmsculpt (no {SOURCE_KEY}); load it "
                          "with transformers: AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)")
    base = src.get("sculpt_base_model_type")
    if base:
        return SCULPT_CLASSES[base][0].from_dict(src)
    values = {k: v for k, v in src.items() if k != "model_type"}
    return AutoConfig.for_model(src["model_type"], **values)


def _pick(t: torch.Tensor, index: list[int | None], width: int, dim: int = 0) -> torch.Tensor:
    """Blocks of ``width`` along ``dim``: block i of the result is block ``index[i]`` of ``t`` (None: zeros)."""
    parts = t.split(width, dim=dim)
    zero = torch.zeros_like(parts[0])
    return torch.cat([zero if i is None else parts[i] for i in index], dim=dim)


def _undo_layout(sd: dict[str, torch.Tensor], arch, n_heads: int) -> dict[str, torch.Tensor]:
    """The export's state dict with each layer's padding and K/V grouping undone (shapes of ``arch``)."""
    from llmsculpt.io.export_vllm import layer_layout

    d, out = arch.head_dim, dict(sd)
    for i, ls in enumerate(arch.layers):
        lay = layer_layout(ls, n_heads)
        q_at = [lay.slots.index(h) for h in range(ls.n_heads)]
        kv_at = [lay.kv.index(j) if j in lay.kv else None for j in range(ls.n_kv)]  # unused K/V heads: zeros
        p = f"model.layers.{i}.self_attn."
        for name, index in (("q_proj", q_at), ("k_proj", kv_at), ("v_proj", kv_at)):
            for kind in ("weight", "bias"):
                if p + f"{name}.{kind}" in out:
                    out[p + f"{name}.{kind}"] = _pick(out[p + f"{name}.{kind}"], index, d)
        out[p + "o_proj.weight"] = _pick(out[p + "o_proj.weight"], q_at, d, dim=1)
    return out


def load_nas(directory: str | Path, *, dtype: torch.dtype | str) -> nn.Module:
    """The pruned model a Nemotron-NAS export was written from, built from its recorded config."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llmsculpt.models.sculpt_modeling import SCULPT_CLASSES
    from llmsculpt.structures.shapes import architecture

    directory = Path(directory)
    raw = json.loads((directory / "config.json").read_text())
    config = nas_source_config(raw, str(directory))
    base = getattr(config, "sculpt_base_model_type", None)
    with torch.device("meta"):
        model = SCULPT_CLASSES[base][1](config) if base else AutoModelForCausalLM.from_config(config)
    sd: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        sd.update(load_file(str(path)))
    sd = _undo_layout(sd, architecture(model), int(raw["num_attention_heads"]))
    wanted = model.state_dict()
    extra = [k for k in sd if k not in wanted and sd[k].count_nonzero()]  # zero biases the route declared
    missing = [k for k in wanted if k not in sd and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if extra or missing:
        raise SculptError(f"{directory}: the weights do not match the recorded model "
                          f"({'unexpected ' + extra[0] if extra else 'missing ' + missing[0]})")
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v for k, v in sd.items() if k in wanted}, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    rotary = model.model.rotary_emb  # its buffers are not in the state dict: computed again, off the meta device
    model.model.rotary_emb = type(rotary)(config=model.config)
    if isinstance(dtype, torch.dtype):
        from llmsculpt.models.placement import place

        place(model, dtype=dtype)
    return model.eval()


def is_nas_export(directory: str | Path) -> bool:
    """Whether ``directory`` holds a Nemotron-NAS layout (config.json's model_type)."""
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get("model_type") == NAS_TYPE
    except (OSError, json.JSONDecodeError):
        return False
