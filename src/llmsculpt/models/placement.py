"""Where and in what precision a model lives: ``--dtype`` and ``--device`` resolved once.

``auto`` dtype is the checkpoint's own (``dtype``/``torch_dtype`` in config.json; GGUF files are
dequantised to bfloat16; tiny built-ins are float32). ``auto`` device is CUDA when present, the
process's own GPU (``LOCAL_RANK``) in a multi-process run, else the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llmsculpt.errors import SculptError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (auto: this process's GPU when present, else the CPU)"
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype, or None for ``auto``; unknown names fail with the choices."""
    if value is None or isinstance(value, torch.dtype):
        if isinstance(value, torch.dtype) and value not in DTYPES.values():
            raise SculptError(f"unsupported dtype {value}; choose one of: {', '.join(DTYPE_CHOICES)}")
        return value
    name = _ALIASES.get(str(value).lower(), str(value).lower().removeprefix("torch."))
    if name == "auto":
        return None
    if name not in DTYPES:
        raise SculptError(f"unknown dtype {value!r}; choose one of: {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


def checkpoint_dtype(kind: str, where: str, config=None) -> torch.dtype:
    """The dtype a checkpoint is stored in (what ``auto`` means for it): a GGUF's matrices are
    dequantised to bf16, unless every one is stored F32 (then float32)."""
    if kind == "gguf":
        return torch.float32 if _gguf_all_f32(where) else torch.bfloat16
    if kind == "tiny":
        return torch.float32
    raw = None
    if config is not None:
        raw = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    elif kind == "dir":
        try:
            cfg = json.loads((Path(where) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            cfg = {}
        raw = cfg.get("dtype") or cfg.get("torch_dtype")
    if isinstance(raw, torch.dtype) and raw in DTYPES.values():
        return raw
    return DTYPES.get(str(raw).removeprefix("torch."), torch.float32)


def _gguf_all_f32(path: str) -> bool:
    from gguf import GGUFReader, GGMLQuantizationType

    matrices = [t for t in GGUFReader(str(path)).tensors if len(t.shape) >= 2]
    return bool(matrices) and all(t.tensor_type == GGMLQuantizationType.F32 for t in matrices)


def source_dtype(name, dtype: str | torch.dtype | None) -> torch.dtype:
    """``dtype`` resolved for the model ``name`` without loading it (``auto`` on a hub id: float32)."""
    from llmsculpt.models.loading import resolve_source

    parsed = parse_dtype(dtype)
    if parsed is not None:
        return parsed
    kind, where = resolve_source(name)
    return checkpoint_dtype(kind, where) if kind != "hub" else torch.float32


def resolve_device(value: str | torch.device | None = None) -> torch.device:
    """``auto``/None → this process's CUDA device when present, else the CPU; others are checked."""
    if isinstance(value, torch.device):
        return value
    name = "auto" if value is None else str(value).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SculptError(f"unknown device {value!r}; expected {DEVICE_HELP}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SculptError(f"device {value!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SculptError(f"device {value!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SculptError(f"device {value!r} asked for, but MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SculptError(f"unsupported device {value!r}; expected {DEVICE_HELP}")
    return device


def place(model, *, device=None, dtype: torch.dtype | None = None):
    """``model.to(device, dtype)`` with its rotary tables (``inv_freq`` buffers, computed from the
    config, not weights) kept in fp32, as transformers' own bf16 loading keeps them: cast to bf16
    they would shift the rotary angles of far positions. Returns the model."""
    tables = {name: buf for name, buf in model.named_buffers() if name.rsplit(".", 1)[-1].endswith("inv_freq")}
    model.to(device=device, dtype=dtype)
    for name, buf in tables.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        setattr(module, attr, buf.to(device=device if device is not None else buf.device))
    return model



def fp32_rotary(model, device=None):
    """Recompute, in fp32 from the config, every rotary table that is not there: left in lower
    precision by a cast (a model the caller moved with ``.to(torch.bfloat16)``), so that a run and its
    resumption from a checkpoint (loaded with :func:`place`'s fp32 tables) compute the same angles;
    or on the meta device (a skeleton built from the config), then on ``device``. Returns the model."""
    for name, module in list(model.named_modules()):
        inv = getattr(module, "inv_freq", None)
        if not torch.is_tensor(inv) or getattr(module, "config", None) is None:
            continue
        if inv.is_meta or inv.dtype != torch.float32:
            parent, _, attr = name.rpartition(".")
            with torch.device(device if inv.is_meta else inv.device):
                fresh = type(module)(config=module.config)
            setattr(model.get_submodule(parent) if parent else model, attr, fresh)
    return model
