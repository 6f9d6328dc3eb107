"""Where things live in each supported decoder family.

An :class:`ArchSpec` names the attribute paths of the embedding, the decoder layers, the norms and
the q/k/v/o and gate/up/down projections. Structures, importance and surgery read models only
through a spec, never by tracing, so adding a family is adding one spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths of one family of Hugging Face causal LMs (all relative to the top model)."""

    model_type: str
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attn: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    mlp: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    head_norms: tuple[str, ...] = ()  # per-head norms over head_dim (Qwen3 q_norm/k_norm)
    qkv_bias: bool = False
    o_bias_with_qkv: bool = True  # the family's attention-bias flag also puts a bias on o_proj

    # --- navigation helpers -------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return get_path(model, self.layers)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn)

    def mlp_module(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp)

    def qkvo(self, layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        a = self.attention(layer)
        return getattr(a, self.q), getattr(a, self.k), getattr(a, self.v), getattr(a, self.o)

    def gate_up_down(self, layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        m = self.mlp_module(layer)
        return getattr(m, self.gate), getattr(m, self.up), getattr(m, self.down)


def get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(root: nn.Module, path: str, value) -> None:
    *parents, last = path.split(".")
    obj = root
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")
ARCHITECTURES.add("llama", ArchSpec(model_type="llama"))
ARCHITECTURES.add("mistral", ArchSpec(model_type="mistral"))
ARCHITECTURES.add("qwen2", ArchSpec(model_type="qwen2", qkv_bias=True, o_bias_with_qkv=False))
ARCHITECTURES.add("qwen3", ArchSpec(model_type="qwen3", head_norms=("q_norm", "k_norm")))


SCULPT_PREFIX = "sculpt_"


def base_model_type(config) -> str:
    """The family name of a config, seeing through llmsculpt's heterogeneous wrapper types."""
    mt = getattr(config, "sculpt_base_model_type", None) or config.model_type
    # a loaded heterogeneous model that pruning made uniform again keeps our config class (and its
    # model_type) until it is saved; its family is still the base one
    return mt[len(SCULPT_PREFIX):] if mt.startswith(SCULPT_PREFIX) else mt


def spec_for(model_or_config) -> ArchSpec:
    """The ArchSpec of a model (or config); a clear error naming supported families otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    mt = base_model_type(config)
    if mt not in ARCHITECTURES:
        raise SculptError(
            f"architecture {mt!r} is not supported; supported families: "
            f"{', '.join(ARCHITECTURES.names())}"
        )
    return ARCHITECTURES.get(mt)
