"""Speed and memory: prefill and decode tokens/s at several batch sizes, peak memory, parameter
count and FLOPs per token.

Decode runs a greedy loop with the KV cache (``model(..., past_key_values=...)``) so every step
costs one token per sequence, for prefill+decode timings that do not depend on generate()'s
stopping rules. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the growth of the
process's peak resident set (ru_maxrss) during the measurement, which is coarse (it never goes down)
and therefore reported only as the increase seen by the first measurement of a model.
FLOPs per token: 2 × (non-embedding matmul parameters) + attention 2 × 2 × n_heads × head_dim × context
per layer (scores and weighted sum), at the measured context length.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field

import torch

from llmsculpt.structures.shapes import architecture, count_params


@dataclass
class SpeedPoint:
    batch_size: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass
class SpeedResult:
    params: int
    flops_per_token: float
    peak_memory_mb: float
    points: list[SpeedPoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def flops_per_token(model, context: int) -> float:
    arch = architecture(model)
    linear = sum(arch.layer_params(ls) - 2 * arch.hidden for ls in arch.layers) + arch.vocab * arch.hidden
    attn = sum(4 * ls.n_heads * arch.head_dim * context for ls in arch.layers)
    return 2.0 * linear + attn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def _one(model, batch_size: int, prompt_len: int, new_tokens: int, device) -> tuple[float, float]:
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - t0
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode = time.perf_counter() - t0
    return batch_size * prompt_len / prefill, batch_size * new_tokens / decode


def measure_speed(
    model, *, batch_sizes: tuple[int, ...] = (1, 8), prompt_len: int = 128, new_tokens: int = 32, repeats: int = 3
) -> SpeedResult:
    """Best-of-``repeats`` prefill and decode throughput (after one warm-up) per batch size."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _rss_mb()
    points = []
    try:
        for bs in batch_sizes:
            _one(model, bs, min(prompt_len, 16), 2, device)  # warm-up
            runs = [_one(model, bs, prompt_len, new_tokens, device) for _ in range(repeats)]
            points.append(SpeedPoint(bs, max(r[0] for r in runs), max(r[1] for r in runs)))
    finally:
        model.train(was_training)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb() - rss0
    return SpeedResult(
        params=count_params(model),
        flops_per_token=flops_per_token(model, prompt_len + new_tokens // 2),
        peak_memory_mb=peak,
        points=points,
    )


def compare_speed(pruned: SpeedResult, baseline: SpeedResult) -> dict:
    """Ratios pruned / baseline (>1 means the pruned model is faster) per batch size."""
    out = {"params_ratio": pruned.params / baseline.params, "flops_ratio": pruned.flops_per_token / baseline.flops_per_token}
    for p, b in zip(pruned.points, baseline.points):
        out[f"prefill_speedup_bs{p.batch_size}"] = p.prefill_tokens_per_s / b.prefill_tokens_per_s
        out[f"decode_speedup_bs{p.batch_size}"] = p.decode_tokens_per_s / b.decode_tokens_per_s
    return out
