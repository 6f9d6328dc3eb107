"""Config of a per-layer-shaped Llama in NVIDIA's Nemotron-NAS ("DeciLM") layout, written by llmsculpt.

vLLM's ``nemotron_nas.py`` reads, per decoder layer ``i``, ``block_configs[i].attention.n_heads_in_group``
(that layer has ``num_attention_heads // n_heads_in_group`` K/V heads) and
``block_configs[i].ffn.intermediate_size``, by attribute. Entries are therefore dicts (so the config
serialises as plain JSON) that also answer attribute access. Biases: q/k/v from ``qkv_bias``, o_proj
from ``attention_bias``, gate/up/down from ``mlp_bias``.
"""

from __future__ import annotations

from transformers import LlamaConfig


class BlockEntry(dict):
    """A dict whose keys are also attributes (missing ones raise AttributeError, as vLLM expects)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        for key, value in self.items():
            if isinstance(value, dict) and not isinstance(value, BlockEntry):
                self[key] = BlockEntry(value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __post_init__(self, **kwargs):
        blocks = kwargs.pop("block_configs", None)
        if blocks is None:
            blocks = getattr(self, "block_configs", None) or []
        super().__post_init__(**kwargs)
        self.block_configs = [BlockEntry(b) for b in blocks]
        self.qkv_bias = bool(getattr(self, "qkv_bias", False))

    def validate_architecture(self):
        """Llama's check (hidden % heads == 0) does not apply: head_dim is explicit."""
        if not self.head_dim or self.head_dim <= 0:
            raise ValueError("head_dim must be set explicitly")

    def validate(self) -> None:
        # the strict-dataclass validators are bound to LlamaConfig; run them without its architecture check
        for validator in getattr(LlamaConfig, "__class_validators__", []):
            if validator.__name__ != "validate_architecture":
                validator(self)
        self.validate_architecture()
