"""Checkpoints of long pruning-and-training runs (Adapt-Accel, pruning-aware training).

``<dir>/last/`` holds the model (pruned shapes and all, loadable with ``llmsculpt.load``), the
optimiser state and ``state.json`` (counters, the composed plan, the run's configuration). A new
checkpoint is written to ``last.tmp`` and swapped in with renames, so a run killed at any moment
leaves a complete checkpoint: ``last``, or ``last.old`` if it died between the two renames.
``<dir>/log.jsonl`` is the run's log; on resume, entries after the checkpoint are dropped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from llmsculpt.errors import SculptError


def save_checkpoint(directory: Path, model, tokenizer, optimizer, state: dict) -> None:
    from llmsculpt.io.save import write_model_files

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar every few steps
    try:
        write_model_files(model, tokenizer, tmp)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    old = directory / "last.old"
    if (directory / "last").exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory / "last", old)
    os.replace(tmp, directory / "last")
    shutil.rmtree(old, ignore_errors=True)


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
