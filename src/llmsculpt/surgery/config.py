"""Rewrite a model's config from its modules after surgery (config after surgery is first-class)."""

from __future__ import annotations

from torch import nn

from llmsculpt.structures.shapes import Architecture, architecture


def layer_entries(arch: Architecture) -> list[dict]:
    """The ``sculpt_layers`` list of a heterogeneous config."""
    out = []
    for ls in arch.layers:
        entry = {"num_attention_heads": ls.n_heads, "num_key_value_heads": ls.n_kv, "intermediate_size": ls.mlp}
        if not ls.is_grouped_evenly:
            entry["kv_map"] = list(ls.kv_map)
        out.append(entry)
    return out


def sync_config(model: nn.Module) -> Architecture:
    """Make ``model.config`` describe the modules exactly; returns the architecture it read.

    Uniform models get a vanilla config (head counts, widths, head_dim); heterogeneous ones also
    carry ``sculpt_layers`` and ``sculpt_base_model_type``, with the top-level counts set to the
    largest layer (so code that sizes buffers from them stays safe).
    """
    arch = architecture(model)
    cfg = model.config
    cfg.hidden_size = arch.hidden
    cfg.num_hidden_layers = len(arch.layers)
    cfg.head_dim = arch.head_dim
    cfg.num_attention_heads = max(ls.n_heads for ls in arch.layers)
    cfg.num_key_value_heads = max(ls.n_kv for ls in arch.layers)
    cfg.intermediate_size = max(ls.mlp for ls in arch.layers)
    for key in ("sculpt_layers", "sculpt_base_model_type", "sculpt_output_bias"):
        if hasattr(cfg, key):
            delattr(cfg, key)
    # biases on o_proj/down_proj alone (FLAP's compensation) have no vanilla config flag: the
    # family's attention_bias / mlp_bias would add them to q/k/v or gate/up as well
    from llmsculpt.models.spec import spec_for

    vanilla_o_bias = arch.qkv_bias and spec_for(model).o_bias_with_qkv
    odd_bias = arch.o_bias != vanilla_o_bias or arch.down_bias != arch.mlp_bias
    if odd_bias:
        cfg.sculpt_output_bias = {"o_proj": arch.o_bias, "down_proj": arch.down_bias}
    if odd_bias or not (arch.is_uniform and vanilla_config_ok(cfg)):
        cfg.sculpt_layers = layer_entries(arch)
        cfg.sculpt_base_model_type = arch.model_type
    return arch


def vanilla_config_ok(cfg) -> bool:
    """Whether the family's own config class accepts these values (Llama's, for one, insists that
    hidden_size is a multiple of the head count even when head_dim is explicit)."""
    from transformers import AutoConfig

    from llmsculpt.models.spec import base_model_type

    values = cfg.to_dict()
    values["model_type"] = base_model_type(cfg)  # a per-layer model loaded with our class, uniform again
    for key in ("auto_map", "architectures"):
        values.pop(key, None)
    try:
        AutoConfig.for_model(**values)
    except Exception:  # strict validation errors
        return False
    return True


def is_vanilla(cfg) -> bool:
    """True when the config loads in plain transformers without llmsculpt's modeling file."""
    return not getattr(cfg, "sculpt_base_model_type", None)
