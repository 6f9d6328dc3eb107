"""RoPE in llama.cpp's terms, for the GGUF export (io/export_gguf.py): the base, the scaling
metadata llama.cpp's converter writes (linear, yarn) and Llama-3.1's per-frequency divisors
(``rope_freqs``); anything llama.cpp has no equivalent for is refused in one line."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmsculpt.errors import SculptError


@dataclass(frozen=True)
class Rope:
    """RoPE as llama.cpp reads it: the base, llama.cpp's scaling metadata and (llama3) ``rope_freqs``."""

    theta: float
    kind: str = "default"  # the HF rope_type: default | linear | yarn | llama3
    factor: float = 1.0  # linear, yarn
    orig_ctx: int = 0  # yarn: original_max_position_embeddings
    attn_factor: float = 1.0  # yarn: cos/sin scale beyond llama.cpp's own 0.1 ln(factor) + 1
    freqs: torch.Tensor | None = None  # llama3: per-frequency divisors, written as rope_freqs.weight


def _mscale(scale: float, m: float = 1.0) -> float:
    """YaRN's attention scale 0.1 m ln(s) + 1 (1 when not extending), as transformers and llama.cpp use it."""
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def llama3_rope_factors(
    *, theta: float, dim: int, factor: float, low_freq_factor: float, high_freq_factor: float, orig_ctx: int,
) -> torch.Tensor:
    """Llama-3.1 RoPE as per-frequency divisors of the plain inverse frequencies (length ``dim // 2``, f32).

    Wavelengths shorter than ``orig_ctx / high_freq_factor`` are kept (1), longer than ``orig_ctx /
    low_freq_factor`` are divided by ``factor``, and the band between is interpolated smoothly. llama.cpp
    divides each rotation angle by these (its ``rope_freqs`` tensor), so plain inv_freq / divisor is
    exactly transformers' llama3 inv_freq.
    """
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    wavelen = 2 * math.pi / inv
    smooth = (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    medium = 1.0 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen > orig_ctx / low_freq_factor, torch.full_like(inv, factor), medium)
    return torch.where(wavelen < orig_ctx / high_freq_factor, torch.ones_like(inv), out).to(torch.float32)


_ROPE_KINDS = "default, linear, yarn and llama3"


def gguf_rope(cfg, *, head_dim: int, target) -> Rope:
    """The RoPE of ``cfg`` in llama.cpp's terms, or a one-line SculptError naming what llama.cpp lacks."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise SculptError(f"GGUF export: per-layer-type RoPE parameters ({', '.join(params)}) are not supported")
    kind = str(params.get("rope_type") or params.get("type") or "default").lower()
    theta = float(params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)
    partial = params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None))
    if partial not in (None, 1, 1.0):
        raise SculptError(f"GGUF export: partial rotary embeddings (partial_rotary_factor={partial}) are not "
                          f"supported by llama.cpp's {target.name} graph; export with --format hf instead")

    def need(key: str) -> float:
        if params.get(key) is None:
            raise SculptError(f"GGUF export: rope scaling {kind!r} without {key!r} in the config's rope_parameters")
        return float(params[key])

    if kind == "default":
        return Rope(theta)
    if kind == "linear":
        return Rope(theta, kind, factor=need("factor"))
    if kind == "llama3":
        if target.name not in ("llama", "deci"):
            raise SculptError(f"GGUF export: rope scaling 'llama3' needs per-frequency factors (rope_freqs), which "
                              f"llama.cpp's {target.name} graph does not read; export with --format hf instead")
        freqs = llama3_rope_factors(
            theta=theta, dim=head_dim, factor=need("factor"), low_freq_factor=need("low_freq_factor"),
            high_freq_factor=need("high_freq_factor"), orig_ctx=int(need("original_max_position_embeddings")),
        )
        return Rope(theta, kind, freqs=freqs)
    if kind == "yarn":
        orig = int(params.get("original_max_position_embeddings") or cfg.max_position_embeddings)
        factor = float(params.get("factor") or cfg.max_position_embeddings / orig)
        fixed = {"beta_fast": 32, "beta_slow": 1, "truncate": True}  # what llama.cpp's graphs use, not read
        odd = [f"{k}={params[k]}" for k, v in fixed.items() if params.get(k) not in (None, v)]
        if odd:
            raise SculptError(f"GGUF export: rope scaling 'yarn' with {', '.join(odd)} is not supported (llama.cpp's "
                              f"{target.name} graph uses {', '.join(f'{k}={v}' for k, v in fixed.items())})")
        attn = params.get("attention_factor")
        if attn is None:
            mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
            attn = _mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all else _mscale(factor)
        return Rope(theta, kind, factor=factor, orig_ctx=orig, attn_factor=float(attn) / _mscale(factor))
    raise SculptError(f"GGUF export: rope scaling {kind!r} is not supported (llama.cpp's {target.name} graph has no "
                      f"equivalent; supported: {_ROPE_KINDS}); export with --format hf instead")


def add_rope_metadata(writer, rope: Rope) -> None:
    """RoPE keys as llama.cpp's converter writes them; llama3 needs none beyond the ``rope_freqs`` tensor
    (absent a scaling type llama.cpp reads "linear" with factor 1, i.e. no scaling)."""
    import gguf

    writer.add_rope_freq_base(rope.theta)
    if rope.kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope.kind))
        writer.add_rope_scaling_factor(rope.factor)
    if rope.kind == "yarn":
        writer.add_rope_scaling_orig_ctx_len(rope.orig_ctx)
        if abs(rope.attn_factor - 1.0) > 1e-7:
            writer.add_rope_scaling_attn_factors(rope.attn_factor)
