"""Heterogeneous (per-layer shaped) decoder models for Llama, Mistral, Qwen2 and Qwen3.

This file is self-contained on purpose: llmsculpt copies it next to a saved heterogeneous model so
that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works with only torch and
transformers installed. ``llmsculpt.load(dir)`` imports the same classes from the package instead.

The config carries ``sculpt_layers``: one dict per decoder layer with ``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size`` and, for "cluster attention" layers where the kept
query heads are spread unevenly over the kept K/V heads, ``kv_map`` (the K/V head of each query
head). Such layers expand K/V to one head per query head right after the projection (exact, costs
KV-cache memory, not parameters).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


class HeadGatherLinear(nn.Linear):
    """A K or V projection whose output heads are gathered by ``kv_map`` (one per query head).

    Its parameters have the shape of the kept K/V heads, so the state-dict is that of a plain
    ``nn.Linear``; only the forward output is expanded: ``forward(x) == gather(project(x))``.
    Anything that adds to the projection (a LoRA delta, which is one per K/V head like the weight)
    must add to ``project(x)``, before the gather: llmsculpt's LoRA layer for this class does
    (train/trainer.py); peft's plain ``lora.Linear`` would add it after, at the wrong width.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, head_dim: int, kv_map, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.head_dim = head_dim
        # a plain tuple, not a buffer: it is architecture (from the config), not state, and must
        # survive meta-device initialisation in from_pretrained
        self.kv_map = tuple(int(j) for j in kv_map)
        self._index: torch.Tensor | None = None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The K/V heads themselves (n_kv·head_dim wide)."""
        return super().forward(x)

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """One K/V head per query head: n_kv·head_dim → n_q·head_dim."""
        heads = y.view(*y.shape[:-1], -1, self.head_dim)
        if self._index is None or self._index.device != heads.device:
            self._index = torch.tensor(self.kv_map, dtype=torch.long, device=heads.device)
        return heads.index_select(-2, self._index).reshape(*y.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gather(self.project(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kv_map={list(self.kv_map)}"


def _new_linear(old: nn.Linear, in_features: int, out_features: int, cls=nn.Linear, **extra) -> nn.Linear:
    """A fresh Linear of the given shape on the old one's device/dtype (meta stays meta)."""
    w = old.weight
    return cls(in_features, out_features, bias=old.bias is not None, device=w.device, dtype=w.dtype, **extra)


def reshape_attention(attn: nn.Module, n_heads: int, n_kv: int, kv_map=None) -> None:
    """Give an attention module new (uninitialised) projections for n_heads query / n_kv K/V heads."""
    hd = attn.head_dim
    hidden = attn.q_proj.in_features
    attn.q_proj = _new_linear(attn.q_proj, hidden, n_heads * hd)
    if kv_map is None:
        if n_heads % n_kv:
            raise ValueError(f"{n_heads} query heads cannot share {n_kv} K/V heads evenly; pass kv_map")
        attn.k_proj = _new_linear(attn.k_proj, hidden, n_kv * hd)
        attn.v_proj = _new_linear(attn.v_proj, hidden, n_kv * hd)
        attn.num_key_value_groups = n_heads // n_kv
    else:
        kw = {"cls": HeadGatherLinear, "head_dim": hd, "kv_map": kv_map}
        attn.k_proj = _new_linear(attn.k_proj, hidden, n_kv * hd, **kw)
        attn.v_proj = _new_linear(attn.v_proj, hidden, n_kv * hd, **kw)
        attn.num_key_value_groups = 1
    attn.o_proj = _new_linear(attn.o_proj, n_heads * hd, attn.o_proj.out_features)


def reshape_mlp(mlp: nn.Module, width: int) -> None:
    hidden = mlp.gate_proj.in_features
    mlp.gate_proj = _new_linear(mlp.gate_proj, hidden, width)
    mlp.up_proj = _new_linear(mlp.up_proj, hidden, width)
    mlp.down_proj = _new_linear(mlp.down_proj, width, hidden)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width


def apply_layer_shapes(model: nn.Module, layers: list[dict]) -> None:
    """Resize every decoder layer of a freshly built model to the shapes in ``sculpt_layers``."""
    decoder = model.model.layers
    if len(layers) != len(decoder):
        raise ValueError(f"sculpt_layers has {len(layers)} entries for {len(decoder)} decoder layers")
    for layer, shape in zip(decoder, layers):
        attn = layer.self_attn
        n_q, n_kv = shape["num_attention_heads"], shape["num_key_value_heads"]
        kv_map = shape.get("kv_map")
        if (n_q, n_kv, kv_map) != (attn.q_proj.out_features // attn.head_dim,
                                   attn.k_proj.out_features // attn.head_dim, None):
            reshape_attention(attn, n_q, n_kv, kv_map)
        if shape["intermediate_size"] != layer.mlp.down_proj.in_features:
            reshape_mlp(layer.mlp, shape["intermediate_size"])


def add_output_biases(model: nn.Module, *, o_proj: bool, down_proj: bool) -> None:
    """Give o_proj / down_proj a (zero) bias in every layer, keeping their weights."""
    for layer in model.model.layers:
        for owner, name, wanted in ((layer.self_attn, "o_proj", o_proj), (layer.mlp, "down_proj", down_proj)):
            old = getattr(owner, name)
            if wanted and old.bias is None:
                w = old.weight
                new = nn.Linear(old.in_features, old.out_features, bias=True, device=w.device, dtype=w.dtype)
                new.weight = old.weight
                with torch.no_grad():
                    new.bias.zero_()
                setattr(owner, name, new)


def _mixin_init(self, config) -> None:
    layers = getattr(config, "sculpt_layers", None)
    if layers:
        apply_layer_shapes(self, layers)
    bias = getattr(config, "sculpt_output_bias", None)
    if bias:
        add_output_biases(self, o_proj=bool(bias.get("o_proj")), down_proj=bool(bias.get("down_proj")))


class SculptLlamaConfig(LlamaConfig):
    model_type = "sculpt_llama"

    def validate_architecture(self):
        """Llama's check (hidden % heads == 0) is stricter than the modeling code: with an explicit
        head_dim, pruned models may have any head count."""
        if not self.head_dim or self.head_dim <= 0:
            raise ValueError("head_dim must be set explicitly for pruned models")

    def validate(self) -> None:
        # transformers' strict dataclass binds the validator list to LlamaConfig itself, so the
        # override above only takes effect if we run the list ourselves
        for validator in getattr(LlamaConfig, "__class_validators__", []):
            if validator.__name__ != "validate_architecture":
                validator(self)
        self.validate_architecture()


class SculptLlamaForCausalLM(LlamaForCausalLM):
    config_class = SculptLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _mixin_init(self, config)


class SculptMistralConfig(MistralConfig):
    model_type = "sculpt_mistral"


class SculptMistralForCausalLM(MistralForCausalLM):
    config_class = SculptMistralConfig

    def __init__(self, config):
        super().__init__(config)
        _mixin_init(self, config)


class SculptQwen2Config(Qwen2Config):
    model_type = "sculpt_qwen2"


class SculptQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = SculptQwen2Config

    def __init__(self, config):
        super().__init__(config)
        _mixin_init(self, config)


class SculptQwen3Config(Qwen3Config):
    model_type = "sculpt_qwen3"


class SculptQwen3ForCausalLM(Qwen3ForCausalLM):
    config_class = SculptQwen3Config

    def __init__(self, config):
        super().__init__(config)
        _mixin_init(self, config)


# base model_type -> (config class, model class); read by llmsculpt's saver and loader.
SCULPT_CLASSES = {
    "llama": (SculptLlamaConfig, SculptLlamaForCausalLM),
    "mistral": (SculptMistralConfig, SculptMistralForCausalLM),
    "qwen2": (SculptQwen2Config, SculptQwen2ForCausalLM),
    "qwen3": (SculptQwen3Config, SculptQwen3ForCausalLM),
}
