"""Export to GGUF for llama.cpp, uniform and heterogeneous models.

Which llama.cpp architecture a model becomes is decided from its modules (never from its config):

* uniform llama / mistral -> ``llama``; uniform qwen2 -> ``qwen2`` (q/k/v biases); uniform qwen3 ->
  ``qwen3`` (per-head q/k RMSNorms);
* heterogeneous llama / mistral (per-layer query heads, K/V heads or MLP widths) -> ``deci`` (the
  architecture llama.cpp uses for NVIDIA's Nemotron-51B), which takes per-layer arrays for
  ``head_count``, ``head_count_kv`` and ``feed_forward_length``;
* heterogeneous qwen2 / qwen3 are refused: llama.cpp has no architecture with per-layer shapes *and*
  q/k/v biases (qwen2) or q/k norms (qwen3). Export those through the HF format instead.

Cluster-attention layers (query heads mapped unevenly to K/V heads, ``kv_map``) are exported by
physically duplicating each K/V head once per query head it serves, so in the file that layer has as
many K/V heads as query heads. The maths is exact; the cost is a larger KV cache for that layer.

Llama-family Q/K rows are permuted from Hugging Face's rotate-half RoPE layout to llama.cpp's
interleaved one (the ``llama``/``deci`` graphs use normal RoPE); qwen2/qwen3 use NeoX RoPE in llama.cpp,
which *is* the rotate-half layout, so their rows are written as they are.

RoPE scaling is written as llama.cpp's own converter does: ``linear`` and ``yarn`` as
``rope.scaling.*`` keys (every target); ``llama3`` (Llama-3.1/3.2) as a ``rope_freqs.weight`` tensor
of per-frequency divisors, which the ``llama`` and ``deci`` graphs read (qwen2/qwen3 do not: refused).
Other kinds (dynamic, longrope, ...) are refused naming the kind.

The tokenizer (byte-level BPE: SmolLM, Llama-3, Qwen2 style) is embedded so the file is
self-contained. Tensor types: ``f32``, ``f16`` and ``q8_0``; norms, biases and ``rope_freqs`` always
stay f32. q8_0 quantises rows in blocks of 32, so a q8_0 export is refused, naming the matrices, when
some row width is not a multiple of 32 (prune with ``--round-to 32``); ``allow_mixed=True``
(``--allow-mixed``) keeps those matrices f16 instead, with a warning.

Example:
    >>> from llmsculpt.models.loading import load
    >>> loaded = load("smollm2-135m")                                      # doctest: +SKIP
    >>> export_gguf(loaded.model, loaded.tokenizer, "smollm2.gguf", dtype="q8_0")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmsculpt.errors import SculptError
from llmsculpt.io._gguf_rope import add_rope_metadata, gguf_rope
from llmsculpt.io._gguf_tokenizer import add_tokenizer, check_tokenizer
from llmsculpt.models.spec import spec_for
from llmsculpt.structures.shapes import Architecture, architecture

DTYPES = ("f32", "f16", "q8_0")
ROPE_KEY = "llmsculpt.rope_parameters"  # the HF rope_parameters, JSON, when RoPE is scaled
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0


@dataclass(frozen=True)
class Target:
    """What the file will be: llama.cpp architecture name and how tensors are laid out."""

    name: str  # llama | deci | qwen2 | qwen3
    permute_qk: bool  # llama/deci: HF rotate-half -> llama.cpp interleaved RoPE rows
    heterogeneous: bool


def gguf_target(arch: Architecture) -> Target:
    """The llama.cpp architecture for ``arch``, or a SculptError saying why there is none."""
    mt, het = arch.model_type, not arch.is_uniform
    if arch.o_bias or arch.mlp_bias or arch.down_bias:
        raise SculptError(f"GGUF export: layer 0: this {mt} model has biases on o_proj or the MLP, which the "
                          "llama.cpp graphs for this family do not have (FLAP adds them; --serve llamacpp refuses "
                          "such a plan up front); export with --format hf instead")
    if mt in ("llama", "mistral"):
        if arch.qkv_bias:
            raise SculptError(f"GGUF export: layer 0: this {mt} model has q/k/v biases (attention_bias), which "
                              "llama.cpp's llama/deci graphs do not load (--serve llamacpp refuses it up front); "
                              "export with --format hf instead")
        return Target("deci" if het else "llama", permute_qk=True, heterogeneous=het)
    if mt in ("qwen2", "qwen3"):
        if het:
            raise SculptError(
                f"GGUF export of a heterogeneous {mt} model (layer {_first_odd(arch)} differs from layer 0) is not "
                "supported: llama.cpp's only architecture with "
                f"per-layer head counts and MLP widths (deci) has no {'q/k/v biases' if mt == 'qwen2' else 'q/k norms'}. "
                "Uniform qwen2/qwen3 models export fine (prune with --serve llamacpp or --serve uniform); for this one "
                "use --format hf (llmsculpt.load or transformers with trust_remote_code=True)"
            )
        return Target(mt, permute_qk=False, heterogeneous=False)
    raise SculptError(f"GGUF export supports llama, mistral, qwen2 and qwen3 models, not {mt!r}")


def _first_odd(arch: Architecture) -> int:
    first = arch.layers[0]
    return next((i for i, ls in enumerate(arch.layers) if ls != first or not ls.is_grouped_evenly), 0)


def _permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head, reorder rows from HF's rotate-half layout [x0..x_{d/2-1}, y0..] to interleaved [x0, y0, x1, y1..]."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


Q8_0_BLOCK = 32  # llama.cpp quantises rows in blocks of 32 values


class MixedQuantWarning(UserWarning):
    """A q8_0 export kept some matrices f16 (``allow_mixed=True``)."""


def _array(t: torch.Tensor, dtype: str):
    """numpy data and (for q8_0) the ggml type for one tensor; 1-D tensors stay f32, and so does any
    tensor in an f32 file; a matrix whose rows do not split into q8_0 blocks stays f16."""
    import gguf

    a = t.detach().to(device="cpu", dtype=torch.float32).numpy()
    if a.ndim == 1 or dtype == "f32":
        return a, None
    if dtype == "q8_0" and a.shape[-1] % Q8_0_BLOCK == 0:
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return a.astype(np.float16), None


def q8_0_misfits(tensors: list[tuple[str, torch.Tensor]]) -> list[tuple[str, int]]:
    """(name, row width) of every matrix that q8_0 cannot quantise: its rows are not a multiple of 32."""
    return [(n, t.shape[-1]) for n, t in tensors if t.dim() == 2 and t.shape[-1] % Q8_0_BLOCK]


def _misfit_list(misfits: list[tuple[str, int]], shown: int = 3) -> str:
    names = ", ".join(f"{n} (width {w})" for n, w in misfits[:shown])
    return names + (f" and {len(misfits) - shown} more" if len(misfits) > shown else "")


def export_gguf(
    model, tokenizer, out: str | os.PathLike, *, dtype: str = "f16", overwrite: bool = False,
    pre_tokenizer: str | None = None, allow_mixed: bool = False,
) -> Path:
    """Write ``model`` + ``tokenizer`` to one GGUF file that llama.cpp loads.

    The file appears atomically (temp file in the target directory, then rename); on any error no
    file is left behind. Every check (dtype, architecture, RoPE, tokenizer, q8_0 widths, output path)
    runs before anything is written. ``pre_tokenizer`` overrides llama.cpp's pre-tokenizer name
    (``tokenizer.ggml.pre``), which is otherwise derived from the tokenizer.

    With ``dtype="q8_0"`` every matrix is quantised, or, when some row width is not a multiple of 32
    (prune with ``--round-to 32`` to avoid that), the export is refused naming them; ``allow_mixed=True``
    keeps those matrices f16 instead and says so with a :class:`MixedQuantWarning`.
    """
    import gguf

    if dtype not in DTYPES:
        raise SculptError(f"unknown GGUF dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    spec = spec_for(model)
    arch = architecture(model)
    target = gguf_target(arch)
    cfg = model.config
    rope = gguf_rope(cfg, head_dim=arch.head_dim, target=target)
    pre = check_tokenizer(tokenizer, vocab=arch.vocab, pre_tokenizer=pre_tokenizer)
    out = Path(out)
    if out.is_dir():
        raise SculptError(f"{out} is a directory; give a file name ending in .gguf")
    if out.exists() and not overwrite:
        raise SculptError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise SculptError(f"directory {out.parent} does not exist")

    hd, het = arch.head_dim, target.heterogeneous
    heads = [ls.n_heads for ls in arch.layers]
    kv = [ls.n_kv if ls.is_grouped_evenly else ls.n_heads for ls in arch.layers]  # duplicated K/V heads
    ffn = [ls.mlp for ls in arch.layers]
    ctx = int(cfg.max_position_embeddings)
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        ctx = min(ctx, int(cfg.sliding_window))  # llama.cpp's llama graph has no window: exact up to it

    tensors: list[tuple[str, torch.Tensor]] = []  # views, except the permuted / duplicated Q and K/V rows

    def add(name: str, t: torch.Tensor) -> None:
        tensors.append((name, t))

    add("token_embd.weight", model.get_input_embeddings().weight)
    add("output_norm.weight", model.model.norm.weight)
    if not arch.tied:
        add("output.weight", model.lm_head.weight)
    if rope.freqs is not None:
        add("rope_freqs.weight", rope.freqs)
    for i, (layer, ls) in enumerate(zip(spec.decoder_layers(model), arch.layers)):
        _add_layer(add, spec, layer, ls, i, hd=hd, n_kv=kv[i], target=target)
    misfits = q8_0_misfits(tensors) if dtype == "q8_0" else []
    if misfits and not allow_mixed:
        raise SculptError(
            f"q8_0 export: {len(misfits)} of {sum(t.dim() == 2 for _, t in tensors)} matrices cannot be quantised "
            f"because their row width is not a multiple of {Q8_0_BLOCK} (llama.cpp's q8_0 block): "
            f"{_misfit_list(misfits)}; re-prune with --round-to {Q8_0_BLOCK}, or pass --allow-mixed "
            "(allow_mixed=True) to keep them f16"
        )
    if misfits:
        warnings.warn(f"q8_0 export: kept {len(misfits)} matrices f16 (row width not a multiple of {Q8_0_BLOCK}): "
                      f"{_misfit_list(misfits)}", MixedQuantWarning, stacklevel=2)

    from llmsculpt.io.save import atomic_file

    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, target.name)
        try:
            writer.add_name(f"llmsculpt {arch.model_type} export")
            writer.add_context_length(ctx)
            writer.add_embedding_length(arch.hidden)
            writer.add_block_count(len(arch.layers))
            writer.add_feed_forward_length(ffn if het else ffn[0])
            writer.add_head_count(heads if het else heads[0])
            writer.add_head_count_kv(kv if het else kv[0])
            writer.add_key_length(hd)
            writer.add_value_length(hd)
            writer.add_rope_dimension_count(hd)
            add_rope_metadata(writer, rope)
            if rope.kind != "default":  # transformers' GGUF reader drops rope scaling: keep it for llmsculpt.load
                writer.add_string(ROPE_KEY, json.dumps(dict(getattr(cfg, "rope_parameters", None) or {})))
            writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
            writer.add_vocab_size(arch.vocab)
            writer.add_file_type(_FILE_TYPE[dtype])
            add_tokenizer(writer, tokenizer, pre=pre, vocab=arch.vocab)
            for name, t in tensors:
                data, qtype = _array(t, dtype)
                if qtype is None:
                    writer.add_tensor(name, data)
                else:
                    writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        except BaseException:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the original error is the one worth reporting
                pass
            raise
        writer.close()
    return out


def _add_layer(add, spec, layer, ls, i: int, *, hd: int, n_kv: int, target: Target) -> None:
    q, k, v, o = spec.qkvo(layer)
    gate, up, down = spec.gate_up_down(layer)
    rows = None
    if not ls.is_grouped_evenly:  # cluster attention: one copy of its K/V head per query head
        rows = torch.tensor([j * hd + d for j in ls.kv_map for d in range(hd)])
    kw, vw = (k.weight, v.weight) if rows is None else (k.weight[rows], v.weight[rows])
    kb, vb = k.bias, v.bias
    if rows is not None and kb is not None:
        kb, vb = kb[rows], vb[rows]
    qw, qb = q.weight, q.bias
    if target.permute_qk:
        qw, kw = _permute_rope(qw, ls.n_heads), _permute_rope(kw, n_kv)
    norm_in, norm_post = spec.layer_norms
    add(f"blk.{i}.attn_norm.weight", getattr(layer, norm_in).weight)
    add(f"blk.{i}.attn_q.weight", qw)
    add(f"blk.{i}.attn_k.weight", kw)
    add(f"blk.{i}.attn_v.weight", vw)
    if qb is not None:  # qwen2 (gguf_target refuses biases for the RoPE-permuted families)
        add(f"blk.{i}.attn_q.bias", qb)
        add(f"blk.{i}.attn_k.bias", kb)
        add(f"blk.{i}.attn_v.bias", vb)
    for hf_name, gguf_name in zip(spec.head_norms, ("attn_q_norm", "attn_k_norm")):  # qwen3
        add(f"blk.{i}.{gguf_name}.weight", getattr(spec.attention(layer), hf_name).weight)
    add(f"blk.{i}.attn_output.weight", o.weight)
    add(f"blk.{i}.ffn_norm.weight", getattr(layer, norm_post).weight)
    add(f"blk.{i}.ffn_gate.weight", gate.weight)
    add(f"blk.{i}.ffn_up.weight", up.weight)
    add(f"blk.{i}.ffn_down.weight", down.weight)
