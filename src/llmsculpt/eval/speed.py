"""Speed and memory of a model: prefill and decode tokens/s per batch size, peak memory, parameter
count and FLOPs per token. Device-agnostic (CPU, CUDA, MPS): the model is measured where it is.

Timing. Prompts are ``prompt_len`` random token ids. Prefill is one forward pass over the prompts
with ``use_cache=True`` that, like ``generate()``, computes logits for the last position only.
Decode is a greedy loop of ``new_tokens`` single-token steps that reuses the KV cache
(``model(next_ids, past_key_values=...)``), so every step costs exactly one token per sequence and
the timing does not depend on generate()'s stopping rules. Each batch size gets a short
warm-up, then the best of ``repeats`` runs is kept (the least disturbed by other processes).

Memory. ``weights_mb`` is the exact size of parameters and buffers. Per batch size,
``peak_extra_mb`` is the peak memory above what was in use before the run: activations, KV cache and
workspaces. On CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory allocated before (the
peak counter is reset per batch size). On CPU it is the growth of the process's resident set: on
Linux exact, by resetting the kernel's high-water mark (``/proc/self/clear_refs``) and reading
``VmHWM``; elsewhere by sampling the RSS with psutil every millisecond (may miss short spikes).
Resident-set growth includes allocator caching, so it is an upper bound on what the run needs.

FLOPs per token (forward, the usual 2-FLOPs-per-multiply-add convention)::

    2 × (non-embedding matmul parameters)  +  4 × Σ_layers n_heads × head_dim × context

The matmul parameters are q/k/v/o, gate/up/down and the LM head (which costs a matmul even when
tied to the embedding; the embedding lookup costs none); norms and biases are left out. The
attention term is QKᵀ plus the weighted sum of V over ``context`` positions, taken at the mean
context of a decoded token, ``prompt_len + new_tokens / 2``.
"""

from __future__ import annotations

import inspect
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from llmsculpt.structures.shapes import architecture, count_params


@dataclass
class SpeedPoint:
    batch_size: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_extra_mb: float  # above the memory in use before this batch size ran (nan if unmeasurable)


@dataclass
class SpeedResult:
    params: int
    flops_per_token: float
    flops_context: float  # the context length the attention term of flops_per_token assumes
    weights_mb: float
    peak_memory_mb: float  # weights + the largest peak_extra_mb
    device: str
    prompt_len: int
    new_tokens: int
    points: list[SpeedPoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections, and the LM head."""
    arch = architecture(model)
    h, d = arch.hidden, arch.head_dim
    layers = sum(h * d * (2 * ls.n_heads + 2 * ls.n_kv) + 3 * h * ls.mlp for ls in arch.layers)
    return layers + arch.vocab * h


def flops_per_token(model, context: float) -> float:
    """Forward FLOPs for one token attending over ``context`` positions (formula in the module doc)."""
    arch = architecture(model)
    return 2.0 * matmul_params(model) + 4.0 * sum(ls.n_heads for ls in arch.layers) * arch.head_dim * context


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


@contextmanager
def _peak_extra_mb(device: torch.device):
    """Yields a one-item list that holds, after the block, the peak memory growth in MiB."""
    out = [float("nan")]
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        _sync(device)
        out[0] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    try:  # Linux: reset the resident-set high-water mark, read it afterwards
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_kb("VmRSS")
    except OSError:
        base = None
    if base is not None:
        yield out
        out[0] = max(0, _proc_status_kb("VmHWM") - base) / 1024
        return
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        yield out
        return
    proc, stop, peak = psutil.Process(), threading.Event(), [0]
    base = proc.memory_info().rss

    def sample() -> None:
        while not stop.wait(0.001):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out[0] = max(0, max(peak[0], proc.memory_info().rss) - base) / 2**20


@torch.inference_mode()
def _one(model, batch_size: int, prompt_len: int, new_tokens: int, device: torch.device) -> tuple[float, float]:
    """Seconds for one prefill of ``batch_size`` prompts and for ``new_tokens`` greedy decode steps."""
    gen = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=gen).to(device)
    _sync(device)
    t0 = time.perf_counter()
    # like generate(): only the last position's logits (full-prompt logits would dominate memory)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=ids, use_cache=True, **keep)
    nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    prefill = time.perf_counter() - t0
    past = out.past_key_values
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(device)
    return prefill, time.perf_counter() - t0


def measure_speed(
    model, *, batch_sizes: tuple[int, ...] = (1, 8), prompt_len: int = 128, new_tokens: int = 32, repeats: int = 3
) -> SpeedResult:
    """Prefill/decode throughput (best of ``repeats``) and peak memory per batch size, plus size and FLOPs.

    Example:
        >>> res = measure_speed(tiny_model(), batch_sizes=(1,), prompt_len=16, new_tokens=4)  # doctest: +SKIP
        >>> res.points[0].decode_tokens_per_s > 0                                           # doctest: +SKIP
        True
    """
    if not batch_sizes or min(batch_sizes) < 1 or prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError("batch sizes, prompt_len, new_tokens and repeats must be positive")
    device = next(model.parameters()).device
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # tied weights once
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    was_training = model.training
    model.eval()
    points = []
    try:
        _one(model, 1, 4, 1, device)  # one-off costs (lazy library init) are not the model's memory
        for bs in batch_sizes:
            with _peak_extra_mb(device) as peak:
                _one(model, bs, min(prompt_len, 16), 2, device)  # warm-up: kernels, allocator
                runs = [_one(model, bs, prompt_len, new_tokens, device) for _ in range(repeats)]
            prefill, decode = min(r[0] for r in runs), min(r[1] for r in runs)
            points.append(SpeedPoint(bs, bs * prompt_len / prefill, bs * new_tokens / decode, peak[0]))
    finally:
        model.train(was_training)
    context = prompt_len + new_tokens / 2
    return SpeedResult(
        params=count_params(model),
        flops_per_token=flops_per_token(model, context),
        flops_context=context,
        weights_mb=weights / 2**20,
        peak_memory_mb=weights / 2**20 + max(p.peak_extra_mb for p in points),
        device=str(device),
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        points=points,
    )


def compare_speed(pruned: SpeedResult, baseline: SpeedResult) -> dict[str, float]:
    """Ratios pruned / baseline. Sizes and FLOPs: < 1 means smaller; ``*_speedup_bs{n}``: > 1 means
    the pruned model is faster at batch size n (only batch sizes both results measured)."""
    out = {
        "params_ratio": pruned.params / baseline.params,
        "flops_ratio": pruned.flops_per_token / baseline.flops_per_token,
        "weights_ratio": pruned.weights_mb / baseline.weights_mb,
        "peak_memory_ratio": pruned.peak_memory_mb / baseline.peak_memory_mb,
    }
    base = {p.batch_size: p for p in baseline.points}
    for p in pruned.points:
        if p.batch_size in base:
            b = base[p.batch_size]
            out[f"prefill_speedup_bs{p.batch_size}"] = p.prefill_tokens_per_s / b.prefill_tokens_per_s
            out[f"decode_speedup_bs{p.batch_size}"] = p.decode_tokens_per_s / b.decode_tokens_per_s
    return out
