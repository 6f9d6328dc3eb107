"""Tensor shapes read from file headers, never from tensor data: safetensors headers (the 8-byte
length and the JSON that follows it) and GGUF metadata (memory-mapped; tensor infos only).

``sculpt inspect`` describes a checkpoint of any size this way, in milliseconds.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from llmsculpt.errors import SculptError
from llmsculpt.structures.shapes import Architecture, LayerShape

_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header's size


def safetensors_entries(path: str | os.PathLike) -> tuple[int, dict[str, dict]]:
    """(byte offset where the tensor data starts, {tensor name: {dtype, shape, data_offsets}}) of one
    .safetensors file (reads the header bytes only)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise SculptError(f"{path} is not a readable safetensors file: {exc}") from exc
    return 8 + size, {name: info for name, info in header.items() if name != "__metadata__"}


def safetensors_header(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from one .safetensors file's header (reads the header bytes only)."""
    return {name: tuple(info["shape"]) for name, info in safetensors_entries(path)[1].items()}


def safetensors_shapes(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in a model directory's safetensors files (sharded or not); {} if none."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        shapes.update(safetensors_header(path))
    return shapes


def _scalar(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None or not f.data:
        return default
    value = f.parts[f.data[0]]
    return bytes(value).decode("utf-8") if f.types[0].name == "STRING" else value[0].item()


_GGUF_FAMILY = {"llama": "llama", "deci": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def gguf_architecture(path: str | os.PathLike) -> Architecture:
    """Per-layer heads, K/V heads and MLP widths of a GGUF file from its metadata and tensor shapes
    (ggml order: a matrix's first dimension is its row width). A cluster-attention layer was written
    with one K/V head per query head, so that is what the file holds."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise SculptError("reading GGUF needs the 'gguf' package: pip install gguf") from exc
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise SculptError(f"could not read GGUF file {path}: {exc}") from exc
    name = _scalar(reader, "general.architecture")
    if name not in _GGUF_FAMILY:
        raise SculptError(f"GGUF file {path}: architecture {name!r} is not one llmsculpt reads "
                          f"({', '.join(_GGUF_FAMILY)})")
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    hidden, vocab = shapes["token_embd.weight"]
    heads0 = _scalar(reader, f"{name}.attention.head_count")
    hd = _scalar(reader, f"{name}.attention.key_length") or hidden // heads0
    n_layers = int(_scalar(reader, f"{name}.block_count"))
    layers = []
    for i in range(n_layers):
        n_q = shapes[f"blk.{i}.attn_q.weight"][1] // hd
        n_kv = shapes[f"blk.{i}.attn_k.weight"][1] // hd
        rep = max(1, n_q // max(1, n_kv))
        layers.append(LayerShape(n_heads=n_q, n_kv=n_kv, mlp=shapes[f"blk.{i}.ffn_down.weight"][0],
                                 kv_map=tuple(h // rep for h in range(n_q))))
    return Architecture(
        model_type=_GGUF_FAMILY[name], vocab=vocab, hidden=hidden, head_dim=int(hd), layers=tuple(layers),
        tied="output.weight" not in shapes, qkv_bias="blk.0.attn_q.bias" in shapes,
        o_bias="blk.0.attn_output.bias" in shapes, mlp_bias="blk.0.ffn_gate.bias" in shapes,
        down_bias="blk.0.ffn_down.bias" in shapes, head_norms="blk.0.attn_q_norm.weight" in shapes,
    )
