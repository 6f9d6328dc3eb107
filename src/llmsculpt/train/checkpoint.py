"""Checkpoints of long pruning-and-training runs (Adapt-Accel, pruning-aware training).

``<dir>/last/`` holds the model (pruned shapes and all, loadable with ``llmsculpt.load``), the
optimiser state and ``state.json`` (counters, the composed plan, the run's configuration). A new
checkpoint is written to ``last.tmp`` and swapped in with renames, so a run killed at any moment
leaves a complete checkpoint: ``last``, or ``last.old`` if it died between the two renames.
``<dir>/log.jsonl`` is the run's log; on resume, entries after the checkpoint are dropped.

LoRA training keeps its base weights frozen, so within a phase only the adapters and the optimiser
change: ``<dir>/adapters/`` (written the same atomic way) holds those and the run state, on top of
the base model in ``last``; it is only used when it continues the phase ``last`` starts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from llmsculpt.errors import SculptError


def save_checkpoint(directory: Path, model, tokenizer, optimizer_state: dict | None, state: dict) -> None:
    """``optimizer_state``: ``optimizer.state_dict()`` (full-size moments; see Processes.optimizer_state)."""
    from transformers.utils import logging as hf_logging

    from llmsculpt.io.save import write_model_files

    def fill(tmp: Path) -> None:
        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar every few steps
        try:
            write_model_files(model, tokenizer, tmp)
        finally:
            if was_on:
                hf_logging.enable_progress_bar()
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state))

    _swap_in(directory, "last", fill)


def _swap_in(directory: Path, name: str, fill) -> None:
    """Write ``directory/name`` atomically: ``fill(tmp)``, then rename over the previous one."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp, old = directory / f"{name}.tmp", directory / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    if (directory / name).exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory / name, old)
    os.replace(tmp, directory / name)
    shutil.rmtree(old, ignore_errors=True)


def save_adapters(directory: Path, model, optimizer, state: dict) -> None:
    """Checkpoint a LoRA phase in progress: adapter weights, optimiser state and run state."""
    from peft import get_peft_model_state_dict

    def fill(tmp: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}, tmp / "adapters.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state))

    _swap_in(directory, "adapters", fill)


def load_adapters(directory: Path, base_state: dict) -> tuple[dict, dict, dict] | None:
    """(adapter weights, optimiser state, run state) if ``<dir>/adapters`` continues the phase that
    the base checkpoint (run state ``base_state``) starts; else None."""
    where = directory / "adapters"
    if not (where / "state.json").is_file():
        return None
    state = json.loads((where / "state.json").read_text())
    if not (base_state.get("pruned") and state.get("phase") == base_state.get("phase")
            and state.get("global_step", 0) > base_state.get("global_step", 0)):
        return None
    return torch.load(where / "adapters.pt"), torch.load(where / "optimizer.pt"), state


def latest(directory: Path) -> Path:
    for name in ("last", "last.old"):
        if (directory / name / "state.json").is_file():
            return directory / name
    raise SculptError(f"nothing to resume: no checkpoint in {directory}")


def load_checkpoint(directory: Path, config: dict, device) -> tuple[torch.nn.Module, dict | None, dict]:
    """(model, optimiser state or None, run state) of the latest checkpoint; ``config`` must equal the
    one the run was started with (same data order and schedule)."""
    from llmsculpt.models.loading import load

    where = latest(directory)
    state = json.loads((where / "state.json").read_text())
    config = json.loads(json.dumps(config))  # as stored: tuples become lists
    if state.get("config") != config:
        changed = sorted(k for k in set(config) | set(state.get("config", {}))
                         if config.get(k) != state.get("config", {}).get(k))
        raise SculptError(f"the checkpoint in {directory} was made with different settings ({', '.join(changed)}); "
                          "resume with the same command")
    model = load(where, device=device).model
    opt = torch.load(where / "optimizer.pt", map_location=device) if (where / "optimizer.pt").is_file() else None
    return model, opt, state


def read_log(directory: Path, before_step: int) -> list[dict]:
    path = directory / "log.jsonl"
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["step"] < before_step]
