"""Export to GGUF for llama.cpp, uniform and heterogeneous models.

Uniform Llama-family models are written as the ``llama`` architecture. Models whose layers differ
are written as ``deci`` (the architecture llama.cpp uses for NVIDIA's Nemotron-51B), which takes
per-layer arrays for ``head_count``, ``head_count_kv`` and ``feed_forward_length``. Cluster-attention
layers (uneven query heads per K/V head) are exported by duplicating each K/V head once per query
head it serves, so in the file that layer has as many K/V heads as query heads (exact; larger KV
cache). The tokenizer (GPT-2-style BPE, as SmolLM's) is embedded so the file is self-contained.
Q/K rows are permuted from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one.
Supported: llama and mistral families without q/k/v biases (qwen2/qwen3 are refused with a reason).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import spec_for
from llmsculpt.structures.shapes import architecture

DTYPES = ("f32", "f16", "q8_0")
SUPPORTED = ("llama", "mistral")


def _permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half layout -> llama.cpp interleaved layout, per head (rows of q_proj / k_proj)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata(writer, tokenizer) -> None:
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else None
    if not backend or backend.get("model", {}).get("type") != "BPE":
        raise SculptError("GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM/Llama-3) only")
    vocab = backend["model"]["vocab"]
    added = {t["id"]: t for t in backend.get("added_tokens", [])}
    n = max(max(vocab.values()), max(added, default=-1)) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for tok, i in vocab.items():
        tokens[i], types[i] = tok, gguf.TokenType.NORMAL
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = backend["model"].get("merges", [])
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "smollm" in (tokenizer.name_or_path or "").lower() or n == 49152 else "llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id),
                       ("unk", tokenizer.unk_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(int(value))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _array(t: torch.Tensor, dtype: str, *, matrix: bool):
    import gguf

    a = t.detach().float().cpu().numpy()
    if not matrix or dtype == "f32":
        return a.astype(np.float32), None
    if dtype == "f16":
        return a.astype(np.float16), None
    if a.shape[-1] % 32:
        return a.astype(np.float16), None  # q8_0 needs rows in blocks of 32: keep this one in f16
    return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def export_gguf(model, tokenizer, out: str | os.PathLike, *, dtype: str = "f16", overwrite: bool = False) -> Path:
    """Write ``model`` + ``tokenizer`` to a GGUF file atomically (temp file, then rename)."""
    import gguf

    if dtype not in DTYPES:
        raise SculptError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    spec = spec_for(model)
    arch = architecture(model)
    if arch.model_type not in SUPPORTED or arch.qkv_bias or arch.o_bias or arch.down_bias or arch.mlp_bias:
        raise SculptError(
            f"GGUF export supports {', '.join(SUPPORTED)} models without projection biases; this is "
            f"{arch.model_type}{' with biases' if arch.qkv_bias or arch.o_bias or arch.down_bias else ''}"
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise SculptError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise SculptError(f"directory {out.parent} does not exist")
    cfg = model.config
    heterogeneous = not arch.is_uniform
    name = "deci" if heterogeneous else "llama"
    hd = arch.head_dim
    heads = [ls.n_heads for ls in arch.layers]
    kv = [ls.n_kv if ls.is_grouped_evenly else ls.n_heads for ls in arch.layers]
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, name)
        w.add_name("llmsculpt export")
        w.add_context_length(int(cfg.max_position_embeddings))
        w.add_embedding_length(arch.hidden)
        w.add_block_count(len(arch.layers))
        w.add_feed_forward_length([ls.mlp for ls in arch.layers] if heterogeneous else arch.layers[0].mlp)
        w.add_head_count(heads if heterogeneous else heads[0])
        w.add_head_count_kv(kv if heterogeneous else kv[0])
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters.get("rope_theta", 10000.0)))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(arch.vocab)
        w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[dtype])
        _tokenizer_metadata(w, tokenizer)
        embed = model.get_input_embeddings().weight
        _add(w, "token_embd.weight", embed, dtype, matrix=True)
        _add(w, "output_norm.weight", model.model.norm.weight, dtype, matrix=False)
        if not arch.tied:
            _add(w, "output.weight", model.lm_head.weight, dtype, matrix=True)
        for i, (layer, ls) in enumerate(zip(spec.decoder_layers(model), arch.layers)):
            q, k, v, o = spec.qkvo(layer)
            gate, up, down = spec.gate_up_down(layer)
            kw, vw = k.weight, v.weight
            if not ls.is_grouped_evenly:  # cluster attention: one K/V head per query head
                idx = torch.tensor([j * hd + d for j in ls.kv_map for d in range(hd)])
                kw, vw = kw[idx], vw[idx]
            _add(w, f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, dtype, matrix=False)
            _add(w, f"blk.{i}.attn_q.weight", _permute_rope(q.weight, ls.n_heads), dtype, matrix=True)
            _add(w, f"blk.{i}.attn_k.weight", _permute_rope(kw, kv[i]), dtype, matrix=True)
            _add(w, f"blk.{i}.attn_v.weight", vw, dtype, matrix=True)
            _add(w, f"blk.{i}.attn_output.weight", o.weight, dtype, matrix=True)
            _add(w, f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, dtype, matrix=False)
            _add(w, f"blk.{i}.ffn_gate.weight", gate.weight, dtype, matrix=True)
            _add(w, f"blk.{i}.ffn_up.weight", up.weight, dtype, matrix=True)
            _add(w, f"blk.{i}.ffn_down.weight", down.weight, dtype, matrix=True)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _add(writer, name: str, t: torch.Tensor, dtype: str, *, matrix: bool) -> None:
    data, qtype = _array(t, dtype, matrix=matrix)
    if qtype is None:
        writer.add_tensor(name, data)
    else:
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
