"""Refuse, before any weight is loaded, a run that cannot fit its memory budget.

The budget is ``--budget`` (recipe field ``budget``, e.g. "24GB"), or on CUDA the device's free
memory. The peak comes from the same model of memory as ``sculpt estimate`` (eval/memory_estimate.py),
built from config.json on the meta device. When a budget is in force, the largest micro-batch that
fits (the engine's own choice first, then halving) is the one the measuring engine is given; without
one the engine chooses as always, so a run without a budget is exactly what it was.
"""

from __future__ import annotations

import torch
from torch import nn

from llmsculpt.errors import SculptError


def budget_in_force(budget: str | int | None, device) -> tuple[int | None, str]:
    """(bytes, where that number comes from) — (None, "") on a CPU run without ``--budget``."""
    from llmsculpt.config import parse_bytes
    from llmsculpt.models.placement import resolve_device

    if budget not in (None, ""):
        return parse_bytes(budget), f"the --budget of {budget}"
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free), f"the free memory of {dev}"
    return None, ""


def fit_or_refuse(model, *, method: str, dtype, n_samples: int, seq_len: int, budget: str | int | None, device,
                  command: str, training=None, label: str | None = None, devices: int = 1) -> int | None:
    """The micro-batch the measuring engine should use (None: its own choice, no budget in force), or
    a one-line SculptError naming the predicted peak, the budget and what to change. ``model`` is a
    name/path (read from its config on the meta device) or a loaded module; ``training``
    (eval.memory_estimate.Training) adds a training phase; ``label`` names the run in the message;
    ``devices`` > 1: the per-process peak of a sharded prune (api/_sharded.py), micro-batches per process."""
    from llmsculpt.eval.memory_estimate import GRAD_METHODS, FORWARD_METHODS, engine_micro_batch, estimate, working_dtype
    from llmsculpt.models.placement import dtype_name, resolve_device

    limit, origin = budget_in_force(budget, device)
    if limit is None or method not in GRAD_METHODS | FORWARD_METHODS:
        return None  # nothing to fit, or no memory model for this method (the run goes ahead as before)
    working = working_dtype(model, "auto" if isinstance(model, nn.Module) else dtype)  # a module is run as it is
    kind = "cuda" if resolve_device(device).type == "cuda" else "cpu"
    micro = engine_micro_batch(method, n_samples, seq_len, devices)
    while True:
        e = estimate(model, method=method, dtype=working, n_samples=n_samples, seq_len=seq_len, device=kind,
                     budget=limit, micro_batch=micro, training=training, devices=devices)
        if e.fits:
            return e.micro_batch
        if micro == 1:
            break
        micro = max(1, micro // 2)
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    fixed = e.breakdown["runtime"] + e.breakdown["weights"]
    if fixed > limit:
        runtime = " and the runtime (Python, torch)" if e.breakdown["runtime"] else ""
        hint = (f"the weights{runtime} alone need {gb(fixed)}; use "
                + ("--dtype bfloat16, " if working == torch.float32 and training is None else "")
                + "a smaller model or a device with more memory")
    elif training is not None:
        hint = "lower --batch-size or --seq-len (training), or use a device with more memory"
    else:
        hint = "lower --n-samples or --seq-len" + (", use --dtype bfloat16" if working == torch.float32 else "")
        hint += ", or use a device with more memory"
    raise SculptError(f"{command} would need about {gb(e.peak_bytes)} at its peak ({label or method}, "
                      f"{dtype_name(working)}, micro-batch {e.micro_batch}), more than {origin} ({gb(limit)}): "
                      f"{hint}; `sculpt estimate` shows the breakdown")
