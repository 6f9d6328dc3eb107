"""transformers model for the Nemotron-NAS / DeciLM layout written by llmsculpt (``trust_remote_code=True``).

A Llama decoder whose layers take their K/V head count and MLP width from ``block_configs`` (every
layer has ``num_attention_heads`` query heads), with q/k/v biases from ``qkv_bias``, an o_proj bias
from ``attention_bias`` and gate/up/down biases from ``mlp_bias`` -- the same reading as vLLM's
``nemotron_nas.py``, so one directory gives the same logits in both.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaForCausalLM

from .configuration_decilm import DeciLMConfig


def _linear(old: nn.Linear, n_in: int, n_out: int, bias: bool) -> nn.Linear:
    w = old.weight
    return nn.Linear(n_in, n_out, bias=bias, device=w.device, dtype=w.dtype)


class DeciLMForCausalLM(LlamaForCausalLM):
    config_class = DeciLMConfig

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        blocks = config.block_configs
        if len(blocks) != config.num_hidden_layers:
            raise ValueError(f"block_configs has {len(blocks)} entries for {config.num_hidden_layers} layers")
        hidden, d, n_q = config.hidden_size, config.head_dim, config.num_attention_heads
        qkv_bias = bool(getattr(config, "qkv_bias", config.attention_bias))
        for i, (layer, block) in enumerate(zip(self.model.layers, blocks)):
            if block.attention.no_op or block.ffn.no_op or hasattr(block.ffn, "ffn_mult"):
                raise ValueError(f"layer {i}: only explicit attention and intermediate_size blocks are supported")
            attn, mlp = layer.self_attn, layer.mlp
            n_kv = n_q // block.attention.n_heads_in_group
            attn.q_proj = _linear(attn.q_proj, hidden, n_q * d, qkv_bias)
            attn.k_proj = _linear(attn.k_proj, hidden, n_kv * d, qkv_bias)
            attn.v_proj = _linear(attn.v_proj, hidden, n_kv * d, qkv_bias)
            attn.o_proj = _linear(attn.o_proj, n_q * d, hidden, bool(config.attention_bias))
            attn.num_key_value_groups = n_q // n_kv
            width = block.ffn.intermediate_size
            mlp.gate_proj = _linear(mlp.gate_proj, hidden, width, bool(config.mlp_bias))
            mlp.up_proj = _linear(mlp.up_proj, hidden, width, bool(config.mlp_bias))
            mlp.down_proj = _linear(mlp.down_proj, width, hidden, bool(config.mlp_bias))
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = width
