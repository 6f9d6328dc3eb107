"""Export a (pruned) model as a directory that vLLM serves exactly.

Which layout is written is decided from the modules (never from the config), before anything is written:

* uniform shapes with the family's own biases -> the family's own config (``LlamaForCausalLM``,
  ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``), no remote code at all -- except
  Qwen2 with pruned query heads: vLLM's Qwen2 derives head_dim from hidden_size // heads, so those take
  the route below (which reads head_dim);
* per-layer shapes, or biases the family config cannot declare (FLAP's o_proj/down_proj-only ones) ->
  NVIDIA's Nemotron-NAS / DeciLM layout that vLLM's ``nemotron_nas.py`` loads: ``DeciLMForCausalLM``,
  ``model_type: nemotron-nas``, per-layer ``block_configs`` (K/V heads via ``n_heads_in_group``, explicit
  FFN ``intermediate_size``), with our ``configuration_decilm.py`` (read by vLLM and transformers) and
  ``modeling_decilm.py`` (read by transformers only) shipped beside the weights.

vLLM's route has one query-head count for all layers. Every layer is therefore padded to the largest
count with zero q rows (and zero q bias) and zero o_proj columns: a zero query scores every position
equally and its output meets zero o_proj columns, so the logits are unchanged. This keeps the K/V-cache
and k/v savings, not the q/o compute of the padded heads (``served_params`` counts them); a plan made
with ``--serve vllm`` (allocation/serving.py) has one head count already and needs none.
Cluster-attention layers (``kv_map``: query heads spread unevenly over K/V heads) are laid out in
equal groups of ``g`` slots, duplicating a K/V head only when it serves more than ``g`` query heads (the largest ``g`` dividing the global count that fits
is chosen, so the fewest K/V heads are cached). Biases the route implies but the model lacks (k/v/gate/up
when only o_proj/down_proj have one) are written as zeros: vLLM silently drops bias tensors its config
does not declare, so the declaration always covers every bias we have.

Refused up front, one line naming the layer, the reason and what avoids it: per-layer Qwen3 (vLLM's
route has no q/k norms), sliding-window attention, activations other than SiLU.

Example:
    >>> from llmsculpt.models.loading import load
    >>> loaded = load("pruned-dir")                                       # doctest: +SKIP
    >>> export_vllm(loaded.model, loaded.tokenizer, "served-dir")         # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.structures.shapes import Architecture, LayerShape, architecture

NAS_FILES = ("configuration_decilm.py", "modeling_decilm.py")
_NAS_FAMILIES = ("llama", "mistral", "qwen2")
_AVOID = "prune with --serve uniform (uniform shapes export with the family's own config)"
_AVOID_FAMILY = "prune with --serve vllm (for this family it keeps every layer the same shape) or --serve uniform"


@dataclass(frozen=True)
class LayerLayout:
    """How one layer is written: query slot -> original query head (None: zero padding), and exported
    K/V head -> original K/V head (None: an all-zero head that only padding slots use)."""

    slots: tuple[int | None, ...]
    kv: tuple[int | None, ...]

    @property
    def group(self) -> int:
        """vLLM's ``n_heads_in_group``: query slots per exported K/V head."""
        return len(self.slots) // len(self.kv)


@dataclass(frozen=True)
class VllmLayout:
    route: str  # "family" | "nemotron-nas"
    n_heads: int  # the global query-head count (nemotron-nas)
    layers: tuple[LayerLayout, ...]
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def padded_heads(self) -> int:
        return sum(s is None for lay in self.layers for s in lay.slots)


def layer_layout(shape: LayerShape, n_heads: int) -> LayerLayout:
    """Lay ``shape``'s query heads into ``n_heads`` slots in equal groups, one exported K/V head per group.

    The group size is the largest divisor ``g`` of ``n_heads`` for which every K/V head's query heads fit
    in ``ceil(count / g)`` groups within ``n_heads / g`` groups in all (``g = 1`` always fits)."""
    served = [shape.heads_of(j) for j in range(shape.n_kv)]
    for g in sorted((g for g in range(1, n_heads + 1) if n_heads % g == 0), reverse=True):
        if sum(math.ceil(len(h) / g) for h in served) <= n_heads // g:
            break
    slots: list[int | None] = []
    kv: list[int | None] = []
    for j, heads in enumerate(served):  # a K/V head no query head uses is dropped (exact)
        for start in range(0, len(heads), g):
            chunk = heads[start:start + g]
            kv.append(j)
            slots += chunk + [None] * (g - len(chunk))
    while len(kv) < n_heads // g:
        kv.append(None)
        slots += [None] * g
    return LayerLayout(slots=tuple(slots), kv=tuple(kv))


def plan_layout(model: nn.Module) -> VllmLayout:
    """Decide the layout for ``model`` or raise a SculptError saying why vLLM cannot serve it exactly."""
    from llmsculpt.surgery.config import is_vanilla, sync_config

    arch = architecture(model)
    sync_config(model)
    biases = dict(qkv_bias=arch.qkv_bias, o_bias=arch.o_bias, mlp_bias=arch.mlp_bias or arch.down_bias)
    # vLLM's own Qwen2 ignores head_dim (it takes hidden_size // num_attention_heads): pruned heads go the other route
    head_dim_read = arch.model_type != "qwen2" or arch.layers[0].n_heads * arch.head_dim == arch.hidden
    if is_vanilla(model.config) and head_dim_read:
        return VllmLayout("family", 0, (), **biases)
    _check_nas(model, arch)
    n_heads = max(ls.n_heads for ls in arch.layers)
    return VllmLayout("nemotron-nas", n_heads, tuple(layer_layout(ls, n_heads) for ls in arch.layers), **biases)


def _first_odd_layer(arch: Architecture) -> int:
    first = arch.layers[0]
    return next((i for i, ls in enumerate(arch.layers) if ls != first or not ls.is_grouped_evenly), 0)


def _check_nas(model: nn.Module, arch: Architecture) -> None:
    cfg, mt = model.config, arch.model_type
    where = f"vLLM export: layer {_first_odd_layer(arch)}"
    if mt not in _NAS_FAMILIES:
        what = "has no per-head q/k norms (Qwen3)" if arch.head_norms else f"does not cover the {mt} family"
        raise SculptError(f"{where}: per-layer shapes or o_proj/down_proj-only biases need vLLM's Nemotron-NAS "
                          f"route, which {what}; {_AVOID_FAMILY}")
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise SculptError(f"{where}: vLLM's Nemotron-NAS route runs SiLU MLPs only, this model uses {act!r}; "
                          f"{_AVOID}")
    window = getattr(cfg, "sliding_window", None)
    if window and (mt == "mistral" or getattr(cfg, "use_sliding_window", False)) and \
            window < getattr(cfg, "max_position_embeddings", window + 1):
        raise SculptError(f"{where}: vLLM's Nemotron-NAS route has no sliding-window attention (window {window}); "
                          f"{_AVOID}")


def _rows(weight: torch.Tensor, index: tuple[int | None, ...], width: int, dim: int = 0) -> torch.Tensor:
    """Blocks of ``width`` along ``dim``: block i is block ``index[i]`` of ``weight``, or zeros for None."""
    parts = weight.split(width, dim=dim)
    zero = torch.zeros_like(parts[0])
    return torch.cat([zero if i is None else parts[i] for i in index], dim=dim).contiguous()


def nas_state_dict(model: nn.Module, layout: VllmLayout) -> dict[str, torch.Tensor]:
    """The weights in Llama names, padded and grouped as ``layout`` says (zeros for declared, absent biases)."""
    spec = spec_for(model)
    d = architecture(model).head_dim
    embed = get_path(model, spec.embed).weight
    head = get_path(model, spec.lm_head).weight
    sd = {"model.embed_tokens.weight": embed, "model.norm.weight": get_path(model, spec.final_norm).weight}
    if head is not embed:
        sd["lm_head.weight"] = head
    for i, (layer, lay) in enumerate(zip(spec.decoder_layers(model), layout.layers)):
        p = f"model.layers.{i}."
        for norm, name in zip(spec.layer_norms, ("input_layernorm", "post_attention_layernorm")):
            sd[p + name + ".weight"] = getattr(layer, norm).weight
        q, k, v, o = spec.qkvo(layer)
        for name, lin, index in (("q_proj", q, lay.slots), ("k_proj", k, lay.kv), ("v_proj", v, lay.kv)):
            sd[f"{p}self_attn.{name}.weight"] = _rows(lin.weight, index, d)
            if layout.qkv_bias:
                bias = lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0])
                sd[f"{p}self_attn.{name}.bias"] = _rows(bias, index, d)
        sd[f"{p}self_attn.o_proj.weight"] = _rows(o.weight, lay.slots, d, dim=1)
        if layout.o_bias:
            sd[f"{p}self_attn.o_proj.bias"] = o.bias
        for name, lin in zip(("gate_proj", "up_proj", "down_proj"), spec.gate_up_down(layer)):
            sd[f"{p}mlp.{name}.weight"] = lin.weight
            if layout.mlp_bias:
                sd[f"{p}mlp.{name}.bias"] = lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0])
    return {name: t.detach().to("cpu").contiguous() for name, t in sd.items()}


def served_params(model: nn.Module) -> int:
    """Parameters vLLM holds and multiplies for ``model`` as exported: padded query heads (zero q rows,
    zero o_proj columns) and padding K/V heads count, as the runtime runs them (tied embeddings once)."""
    from llmsculpt.structures.shapes import count_params

    layout = plan_layout(model)
    if layout.route == "family":
        return count_params(model)
    return sum(t.numel() for t in nas_state_dict(model, layout).values())


_CARRIED = ("vocab_size", "hidden_size", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
            "hidden_act")


def nas_config(model: nn.Module, layout: VllmLayout):
    """The DeciLMConfig (block_configs, global head count, declared biases) for ``layout``."""
    from llmsculpt.models.decilm.configuration_decilm import DeciLMConfig

    arch = architecture(model)
    src = model.config.to_dict()
    blocks = [{"attention": {"n_heads_in_group": lay.group, "no_op": False},
               "ffn": {"intermediate_size": ls.mlp, "no_op": False}} for lay, ls in zip(layout.layers, arch.layers)]
    cfg = DeciLMConfig(
        **{k: src[k] for k in _CARRIED if k in src},
        num_hidden_layers=len(arch.layers), num_attention_heads=layout.n_heads, head_dim=arch.head_dim,
        num_key_value_heads=max(len(lay.kv) for lay in layout.layers),
        intermediate_size=max(ls.mlp for ls in arch.layers),
        attention_bias=layout.o_bias, qkv_bias=layout.qkv_bias, mlp_bias=layout.mlp_bias, block_configs=blocks,
    )
    cfg.architectures = ["DeciLMForCausalLM"]
    cfg.auto_map = {"AutoConfig": "configuration_decilm.DeciLMConfig",
                    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"}
    cfg.dtype = str(get_path(model, spec_for(model).embed).weight.dtype).removeprefix("torch.")
    # the pruned model's own config (plan_layout synced it): llmsculpt.load undoes the padding from it
    # (models/decilm/loader.py); vLLM and transformers ignore the key
    cfg.sculpt_source_config = {**model.config.to_dict(), "dtype": cfg.dtype}
    return cfg


def export_vllm(model: nn.Module, tokenizer, out: str | os.PathLike, *, overwrite: bool = False,
                extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` (+ tokenizer) to ``out`` in a layout vLLM serves with the same logits; atomic.

    ``extra_files`` ({name: text}, e.g. the recipe) are written inside. Returns the output path; the
    chosen layout is in ``plan_layout(model).route``."""
    from safetensors.torch import save_file

    from llmsculpt.io.save import atomic_dir, check_output_dir, write_model_files
    from llmsculpt.models import decilm

    check_output_dir(out, overwrite=overwrite)
    layout = plan_layout(model)  # refusals happen here, before anything is written
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if layout.route == "family":
            write_model_files(model, tokenizer, tmp)
            return Path(out)
        nas_config(model, layout).save_pretrained(tmp)
        save_file(nas_state_dict(model, layout), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in NAS_FILES:
            shutil.copyfile(Path(decilm.__file__).with_name(name), tmp / name)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)
