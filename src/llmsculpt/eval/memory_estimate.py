"""Predicted peak memory of a prune, from the config alone (the model is built on the meta device).

What a pass holds at its peak (see measure/local.py and eval/chunked_loss.py):

- ``runtime``: Python, torch, transformers, tokenizer and calibration text (CPU RSS only; measured
  with bench/memory.py on tiny models, where it is nearly everything);
- ``weights``: parameters × bytes of the working dtype, split over ``devices`` when sharded;
- ``gradients`` (Taylor methods: adaptive, uniform, sample_aware): the scored parameters only, the
  decoder layers' Linear weights and biases, in the working dtype;
- ``activations``: what autograd keeps for one micro-batch through every decoder layer (eager
  attention keeps heads × seq probabilities per token); forward-only methods keep one layer's;
- ``logits``: one chunk of ``CHUNK_ELEMENTS`` logits in the dtype, upcast to fp32, and its
  log-softmax (never batch × seq × vocabulary).

Example:
    >>> e = estimate("tiny-llama", method="adaptive", dtype="bfloat16")
    >>> e.params, e.weights_bytes
    (139840, 279680)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from llmsculpt.errors import SculptError

RUNTIME_CPU = 750 * 2**20  # measured: a tiny-model prune peaks at 0.69–0.89 GB RSS on this CPU
MICRO_BATCH = 4  # LocalEngine default
GRAD_METHODS = frozenset({"adaptive", "uniform", "sample_aware"})
FORWARD_METHODS = frozenset({"flap", "wanda-sp", "magnitude", "shortgpt"})


@dataclass
class Estimate:
    params: int
    weights_bytes: int
    peak_bytes: int
    breakdown: dict[str, int]
    micro_batch: int
    fits: bool | None = None
    budget_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def meta_model(name) -> nn.Module:
    """The model ``name`` names, with every tensor on the meta device (no weights read)."""
    from transformers import AutoModelForCausalLM

    from llmsculpt.models.loading import _convert_gguf_cached, _read_config, resolve_source
    from llmsculpt.models.sculpt_modeling import SCULPT_CLASSES

    kind, where = resolve_source(name)
    if kind == "tiny":
        from llmsculpt.testing.tiny import tiny_model

        config = tiny_model(where).config
    elif kind == "hub":
        raise SculptError(f"estimate reads a local config.json; download {where!r} first (config only is enough)")
    else:
        config = _read_config(str(_convert_gguf_cached(Path(where)) if kind == "gguf" else where))
    base = getattr(config, "sculpt_base_model_type", None)
    with torch.device("meta"):
        if base:
            return SCULPT_CLASSES[base][1](config)
        return AutoModelForCausalLM.from_config(config)


def _activation_bytes(arch, tokens: int, seq_len: int, item: int, *, backward: bool) -> int:
    """Bytes autograd keeps per micro-batch (all layers), or one layer's working set (forward)."""
    h = arch.hidden
    per_layer = []
    for ls in arch.layers:
        q, kv = ls.n_heads * arch.head_dim, ls.n_kv * arch.head_dim
        if backward:  # inputs of every matmul, q/k/v (and rotated), probabilities, MLP products, fp32 norms
            values = 6 * h + 3 * q + 4 * kv + 5 * ls.mlp + 2 * ls.n_heads * seq_len
            per_layer.append(tokens * (item * values + 4 * 4 * h))
        else:
            per_layer.append(tokens * (item * (4 * h + 3 * ls.mlp + ls.n_heads * seq_len) + 4 * 2 * h))
    return sum(per_layer) if backward else max(per_layer, default=0)


def estimate(
    name,
    *,
    method: str = "adaptive",
    dtype: str | torch.dtype = "bfloat16",
    n_samples: int = 10,
    seq_len: int = 128,
    devices: int = 1,
    device: str = "cpu",
    budget: int | None = None,
) -> Estimate:
    """Predict the peak memory per device of ``method`` on the model ``name`` (config only)."""
    from llmsculpt.eval.chunked_loss import CHUNK_ELEMENTS
    from llmsculpt.measure import scored_parameters
    from llmsculpt.models.placement import parse_dtype
    from llmsculpt.structures.shapes import architecture

    if method not in GRAD_METHODS | FORWARD_METHODS:
        raise SculptError(f"no memory model for method {method!r}; known: {', '.join(sorted(GRAD_METHODS | FORWARD_METHODS))}")
    if min(n_samples, seq_len, devices) < 1:
        raise SculptError("--n-samples, --seq-len and --devices must be positive")
    torch_dtype = parse_dtype(dtype) or torch.bfloat16
    item = torch.empty((), dtype=torch_dtype).element_size()
    model = meta_model(name)
    arch = architecture(model)
    params = arch.param_count()
    scored = sum(p.numel() for p in scored_parameters(model).values())
    backward = method in GRAD_METHODS
    micro = min(MICRO_BATCH, n_samples)
    tokens = micro * seq_len
    parts = {
        "runtime": RUNTIME_CPU if torch.device(device).type == "cpu" else 0,
        "weights": params * item // devices,
        "gradients": scored * item // devices if backward else 0,
        "activations": _activation_bytes(arch, tokens, seq_len, item, backward=backward),
        "logits_chunk": min(CHUNK_ELEMENTS, tokens * arch.vocab) * (item + 4 + 4) * (2 if backward else 1),
    }
    peak = sum(parts.values())
    fits = None if budget is None else peak <= budget
    return Estimate(params=params, weights_bytes=params * item, peak_bytes=peak, breakdown=parts,
                    micro_batch=micro, fits=fits, budget_bytes=budget)


def parse_bytes(text: str) -> int:
    """'48GB', '48G', '24GiB', '500MB' or a plain number of bytes."""
    import re

    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise SculptError(f"cannot read a memory size from {text!r}; write e.g. 48GB or 24GiB")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    if m.group(3).startswith("i"):
        scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)
