"""The one checkpoint format of long pruning-and-training runs (Adapt-Accel, pruning-aware training).

``<dir>/last/`` holds the model (pruned shapes and all, loadable with ``llmsculpt.load``), the
optimiser state (``optimizer.safetensors`` + ``optimizer.json``) and ``state.json`` (counters, the
composed plan, the run's configuration). A new checkpoint is written beside ``last`` and renamed
into place (``io/save.atomic_dir``), so a run killed at any moment leaves a complete checkpoint:
``last``, or the previous one under its backup name if it died between the two renames.
``<dir>/log.jsonl`` is the run's log; on resume, entries after the checkpoint are dropped.

LoRA training keeps its base weights frozen, so within a phase only the adapters and the optimiser
change: ``<dir>/adapters/`` (written the same atomic way) holds those and the run state, on top of
the base model in ``last``; it is only used when it continues the phase ``last`` starts.

Mixed-precision runs (bf16/fp16 weights) save the model in its working dtype and the fp32 master
weights inside the optimiser state (each parameter's ``"master"``, train/mixed.py), so a resumed
run continues from exactly the state an uninterrupted one has; a checkpoint without masters (fp32,
or written before they existed) still loads, the masters then starting from the weights.

Nothing here is pickled: tensors go to safetensors files, everything else to JSON, so reading a
checkpoint never runs code from it, and tensors are loaded straight onto the training device.
"""

from __future__ import annotations

import json
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
            _write_tree(optimizer_state, tmp, "optimizer")
        (tmp / "state.json").write_text(json.dumps(state))

    _swap_in(directory, "last", fill)


def _swap_in(directory: Path, name: str, fill) -> None:
    """Write ``directory/name`` atomically: ``fill(tmp)`` beside it, then renamed over the previous one.
    What a killed run left behind goes: half-done writes before, a previous backup after."""
    from llmsculpt.io.save import atomic_dir

    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f".{name}.tmp-*"):
        if not stale.name.endswith(_BACKUP):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(directory / name, overwrite=True) as tmp:
        fill(tmp)
    for stale in directory.glob(f".{name}.tmp-*{_BACKUP}"):  # a previous one, superseded now
        shutil.rmtree(stale, ignore_errors=True)


_BACKUP = "-old"  # atomic_dir's name for the previous directory while the new one is renamed in


def save_adapters(directory: Path, model, optimizer, state: dict) -> None:
    """Checkpoint a LoRA phase in progress: adapter weights, optimiser state and run state."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        adapters = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapters, tmp / "adapters.safetensors")
        _write_tree(optimizer.state_dict(), tmp, "optimizer")
        (tmp / "state.json").write_text(json.dumps(state))

    _swap_in(directory, "adapters", fill)


def load_adapters(directory: Path, base_state: dict, device) -> tuple[dict, dict, dict] | None:
    """(adapter weights, optimiser state, run state), tensors on ``device``, if ``<dir>/adapters``
    continues the phase that the base checkpoint (run state ``base_state``) starts; else None."""
    from safetensors.torch import load_file

    where = directory / "adapters"
    if not (where / "state.json").is_file():
        return None
    state = json.loads((where / "state.json").read_text())
    if not (base_state.get("pruned") and state.get("phase") == base_state.get("phase")
            and state.get("global_step", 0) > base_state.get("global_step", 0)):
        return None
    _refuse_pickles(where)
    adapters = load_file(where / "adapters.safetensors", device=str(torch.device(device)))
    return adapters, _read_tree(where, "optimizer", device), state


def latest(directory: Path) -> Path:
    """``<dir>/last``, or the previous checkpoint if the run died while renaming a new one in."""
    for where in [directory / "last", *sorted(directory.glob(f".last.tmp-*{_BACKUP}"))]:
        if (where / "state.json").is_file():
            return where
    raise SculptError(f"nothing to resume: no checkpoint in {directory}")


def load_checkpoint(directory: Path, config: dict, device, dtype: torch.dtype = torch.float32, *,
                    weights: bool = True) -> tuple[torch.nn.Module, dict | None, dict]:
    """(model in ``dtype``, optimiser state or None, run state) of the latest checkpoint; ``config``
    must equal the one the run was started with (same data order and schedule). Without ``weights``
    (a sharded run's processes but the main one: their shards and moments are filled from the main
    process's) the model is the checkpoint's meta-device skeleton and the optimiser state an empty
    dict when the checkpoint holds one."""
    from llmsculpt.models.loading import load
    from llmsculpt.models.meta import meta_skeleton

    where = latest(directory)
    state = json.loads((where / "state.json").read_text())
    config = json.loads(json.dumps(config))  # as stored: tuples become lists
    if state.get("config") != config:
        changed = sorted(k for k in set(config) | set(state.get("config", {}))
                         if config.get(k) != state.get("config", {}).get(k))
        raise SculptError(f"the checkpoint in {directory} was made with different settings ({', '.join(changed)}); "
                          "resume with the same command")
    _refuse_pickles(where)
    has_opt = (where / "optimizer.json").is_file()
    if not weights:
        return meta_skeleton(where, dtype), ({} if has_opt else None), state
    model = load(where, device=device, dtype=dtype).model
    opt = _read_tree(where, "optimizer", device) if has_opt else None
    return model, opt, state


def _refuse_pickles(where: Path) -> None:
    """Checkpoints of older versions pickled their tensors; we never unpickle (it runs code)."""
    old = sorted(p.name for p in where.glob("*.pt"))
    if old:
        raise SculptError(f"the checkpoint in {where} holds pickled tensors ({', '.join(old)}) from an older "
                          "llmsculpt, which are not read; start the run again without --resume")


# A nested state (an optimiser's state_dict) as JSON plus one safetensors file. JSON keeps what it
# cannot say itself (tensors, tuples, non-string keys) as one-key markers, so the round trip is exact.
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def _write_tree(tree, directory: Path, name: str) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(tree, tensors)
    save_file(tensors, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(json.dumps(skeleton, allow_nan=False))


def _read_tree(directory: Path, name: str, device):
    from safetensors.torch import load_file

    tensors = load_file(directory / f"{name}.safetensors", device=str(torch.device(device)))
    return _unpack(json.loads((directory / f"{name}.json").read_text()), tensors)


def _pack(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        t = obj.detach().cpu().contiguous()
        if t.numel() and any(t.untyped_storage().data_ptr() == u.untyped_storage().data_ptr()
                             for u in tensors.values() if u.numel()):
            t = t.clone()  # safetensors stores no two keys on one storage
        tensors[key] = t
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {_ITEMS: [[k, _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} without pickling it")


def _unpack(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {_TENSOR}:
        return tensors[obj[_TENSOR]]
    if set(obj) == {_TUPLE}:
        return tuple(_unpack(v, tensors) for v in obj[_TUPLE])
    if set(obj) == {_ITEMS}:
        return {(tuple(k) if isinstance(k, list) else k): _unpack(v, tensors) for k, v in obj[_ITEMS]}
    return {k: _unpack(v, tensors) for k, v in obj.items()}


def read_log(directory: Path, before_step: int) -> list[dict]:
    """The run's log entries before ``before_step`` (the checkpoint's); a line the killed run left
    half written is skipped."""
    from llmsculpt.io.files import iter_jsonl

    path = directory / "log.jsonl"
    if not path.is_file():
        return []
    return [e for _, e in iter_jsonl(path, what="run log", skip_bad=True) if e["step"] < before_step]
