"""Where a decoder layer's weights live while the layer-by-layer engine works on it.

A *residency* loads one decoder layer's weights onto the working device (``load(i)``) and gives
them back (``release(i)``), so a model never needs to be resident as a whole:

- :class:`InMemory`: the model is loaded (on the host, say) and layer ``i`` is moved to the device
  and back; on the CPU both moves are no-ops. This is how tiny models, GGUF files and models passed
  as objects run layer by layer.
- :class:`FromSafetensors`: the model is a *skeleton* built on the meta device from ``config.json``
  (:func:`skeleton`), with only the embedding, the final norm and the rotary tables materialised;
  layer ``i``'s tensors are read from the (sharded) safetensors files when it is loaded, and the
  layer goes back to the meta device when it is released. Host memory then holds one layer at a
  time, whatever the depth.

A released layer keeps its (possibly pruned) shapes on the meta device, so the skeleton always
describes the current architecture (``structures.architecture`` and ``surgery.sync_config`` read it).
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import get_path, spec_for

INDEX = "model.safetensors.index.json"


def weight_files(directory: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a checkpoint directory (sharded with an index, or one file)."""
    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise SculptError(f"{index} is not a safetensors index: {exc}") from None
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / "model.safetensors"
    if not single.is_file():
        raise SculptError(f"{directory} has no safetensors weights (model.safetensors or {INDEX}); "
                          "layer-by-layer loading reads safetensors checkpoints")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def read_tensors(files: dict[str, Path], names: list[str], *, device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (each from its file, opened just for the read) on ``device`` in ``dtype``."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        if name not in files:
            raise SculptError(f"tensor {name!r} is missing from the checkpoint's safetensors files")
        by_file.setdefault(files[name], []).append(name)
    out = {}
    for path, group in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in group:
                t = f.get_tensor(name)
                out[name] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    return out


class InMemory:
    """Layers of a loaded model, moved to ``device`` one at a time (and back to where they were)."""

    def __init__(self, model: nn.Module, device: torch.device | str | None = None) -> None:
        self.model = model
        self.layers = list(spec_for(model).decoder_layers(model))  # the layer objects, whatever wraps them
        self.home = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else self.home
        if self.device != self.home:  # the embedding, norms, head and rotary tables work on the device
            spec = spec_for(model)
            parent_path, attr = spec.layers.rsplit(".", 1)
            parent = get_path(model, parent_path)
            layers = parent._modules.pop(attr)
            try:
                model.to(self.device)
            finally:
                parent._modules[attr] = layers

    def layer(self, i: int) -> nn.Module:
        return self.layers[i]

    def load(self, i: int) -> nn.Module:
        return self.layer(i).to(self.device) if self.device != self.home else self.layer(i)

    def release(self, i: int) -> None:
        if self.device != self.home:
            self.layer(i).to(self.home)


class FromSafetensors:
    """Layers of a skeleton (:func:`skeleton`) read from a checkpoint's safetensors files on load
    and sent back to the meta device on release."""

    def __init__(self, model: nn.Module, directory: str | Path, *, device, dtype: torch.dtype | None) -> None:
        self.model, self.directory = model, Path(directory)
        self.device, self.dtype = torch.device(device), dtype
        self.files = weight_files(directory)
        self.prefix = spec_for(model).layers
        self.layers = list(spec_for(model).decoder_layers(model))  # the layer objects, whatever wraps them

    def layer(self, i: int) -> nn.Module:
        return self.layers[i]

    def names(self, i: int) -> list[str]:
        """Checkpoint names of layer ``i``'s tensors (as the skeleton's state dict names them)."""
        return [f"{self.prefix}.{i}.{n}" for n in self.layer(i).state_dict()]

    def load(self, i: int) -> nn.Module:
        layer = self.layer(i)
        if not _on_meta(layer):
            return layer
        names = self.names(i)
        state = read_tensors(self.files, names, device=self.device, dtype=self.dtype)
        cut = len(f"{self.prefix}.{i}.")
        layer.load_state_dict({n[cut:]: t for n, t in state.items()}, strict=True, assign=True)
        return layer

    def release(self, i: int) -> None:
        self.layer(i).to("meta")
        trim_heap()


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``): tensors below the mmap
    threshold that were freed stay in a heap which every change of widths fragments further
    (measured: +0.4 GB over a 0.5B wanda-sp run layer by layer; 0.3–0.6 GB between the steps of a
    0.5B adaptive prune). A no-op off glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def own_weights(model: nn.Module) -> nn.Module:
    """Copy the host (CPU) weights of ``model`` out of the checkpoint's memory-mapped files, one
    tensor at a time, before a run that replaces them. Loading in the stored dtype leaves every
    tensor a view of the mapped safetensors file; a pruning then replaces a matrix with a smaller
    copy, but the file mapping stays alive as long as any tensor of that file does (a norm, an
    unpruned head), and its pages count once more next to the copies: on a 0.5B bf16 Qwen2 shape,
    0.9 GB of file pages beside 0.9 GB of weights. After each copy, the pages of the file that held
    the tensor are dropped from this process (``madvise(MADV_DONTNEED)``: the mapping is read-only
    and clean, so a later read would fault them in again from the file, unchanged), so the copy
    peaks at the weights plus one tensor even for a single-file checkpoint. Device tensors are
    left as they are."""
    mapped = _mapped_checkpoint_ranges()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "cpu" and not t.is_meta:
                start, size = t.data_ptr(), t.numel() * t.element_size()
                t.data = t.data.clone()
                if any(a <= start and start + size <= b for a, b in mapped):
                    _drop_pages(start, size)
    trim_heap()
    return model


def _mapped_checkpoint_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``*.safetensors`` files (Linux; else none)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip().endswith(".safetensors"):
            a, b = fields[0].split("-")
            ranges.append((int(a, 16), int(b, 16)))
    return ranges


def _drop_pages(start: int, size: int) -> None:
    """``madvise(MADV_DONTNEED)`` on the whole pages inside [start, start + size) of a clean
    read-only file mapping (only ever called on those)."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + size) // page * page
    libc = _libc()
    if hi > lo and libc is not None:
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED


@functools.cache
def _libc():
    """glibc, looked up once (None off Linux or where it cannot be loaded)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.state_dict().values())


def skeleton(directory: str | Path, *, device, dtype: torch.dtype | None, lm_head: bool = False) -> nn.Module:
    """The model of ``directory`` on the meta device, with its embedding, final norm (and, if asked,
    lm_head) read from the safetensors files onto ``device`` and its rotary tables computed there;
    the decoder layers stay on the meta device for :class:`FromSafetensors` to load one at a time."""
    from llmsculpt.models.meta import meta_model
    from llmsculpt.models.placement import fp32_rotary

    model = meta_model(directory)
    spec = spec_for(model)
    files = weight_files(directory)
    wanted = [f"{spec.embed}.weight", f"{spec.final_norm}.weight"]
    tied = get_path(model, spec.lm_head).weight is get_path(model, spec.embed).weight
    if lm_head and not tied:
        wanted.append(f"{spec.lm_head}.weight")
    state = read_tensors(files, wanted, device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
    fp32_rotary(model, device)  # the rotary tables are computed from the config, not read
    model.eval()
    model.config.dtype = dtype or model.config.dtype
    return model


@contextmanager
def resident(residency, i: int) -> Iterator[nn.Module]:
    """Layer ``i`` loaded for the block, released after it whatever happens."""
    layer = residency.load(i)
    try:
        yield layer
    finally:
        residency.release(i)
