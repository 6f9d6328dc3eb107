"""Apply a plan and write the pruned model one decoder layer at a time (``--layer-by-layer``).

For each kept layer: load it (the residency, models/residency.py), prune it in place with its part
of the plan and its weight updates (surgery.prune_layer), write its tensors to their own safetensors
shard under the layer's new index, release it. The embedding, final norm and lm_head are copied
from the source files tensor by tensor into shards of their own. The skeleton keeps every pruned
layer's shapes on the meta device, so the config is then written from it exactly as a whole-model
save would (``io.save.write_model_files`` without weights), with a safetensors index over the
shards. Peak memory: one layer (dense, then pruned) and the largest non-layer tensor.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from llmsculpt.models.residency import read_tensors, resident
from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.plan import Plan, Update
from llmsculpt.structures.shapes import architecture


def write_layer_by_layer(model: nn.Module, residency, plan: Plan, tokenizer, directory: Path) -> dict:
    """Write the pruned model into ``directory`` (see the module docstring); returns the architecture
    dict of the pruned model, as :func:`llmsculpt.io.save.write_model_files` does."""
    from llmsculpt.io.save import write_model_files
    from llmsculpt.surgery.apply import _drop_layers, prune_layer

    spec, arch = spec_for(model), architecture(model)
    plan.validate(arch)
    updates = _every_layer_biased(plan)
    kept = [lp.index for lp in plan.layers if not lp.drop]
    rest = _non_layer_names(model, spec)
    shards = ShardFiles(directory, len(kept) + len(rest))
    for k, i in enumerate(kept):
        with resident(residency, i) as layer:
            prune_layer(spec, layer, plan.layers[i], arch.head_dim, updates.get(i, []))
            shards.write(k, {f"{spec.layers}.{k}.{n}": t for n, t in layer.state_dict().items()})
    for k, name in enumerate(rest, start=len(kept)):
        if copy_tensor_bytes(residency.files[name], name, directory / shards.name(k), dtype=residency.dtype):
            shards.weight_map[name] = shards.name(k)
        else:
            shards.write(k, read_tensors(residency.files, [name], device="cpu", dtype=residency.dtype))
    if any(lp.drop for lp in plan.layers):
        _drop_layers(spec, model, plan)
    shards.write_index()
    return write_model_files(model, tokenizer, directory, weights=False)


class ShardFiles:
    """The numbered safetensors shards of a checkpoint written piece by piece (``files`` of them:
    ``model-0000k-of-0000N.safetensors``), and their index."""

    def __init__(self, directory: Path, files: int) -> None:
        self.directory, self.files = directory, files
        self.weight_map: dict[str, str] = {}

    def name(self, k: int) -> str:
        return f"model-{k + 1:05d}-of-{self.files:05d}.safetensors"

    def write(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        """``tensors`` as shard ``k`` (on the CPU, contiguous)."""
        from safetensors.torch import save_file

        save_file({n: t.detach().contiguous().cpu() for n, t in tensors.items()}, str(self.directory / self.name(k)),
                  metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, self.name(k)))

    def write_index(self) -> None:
        """``model.safetensors.index.json`` over the shards written (their total size in its metadata)."""
        total = sum((self.directory / f).stat().st_size for f in set(self.weight_map.values()))
        (self.directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": self.weight_map}, indent=2, sort_keys=True))


COPY_CHUNK = 1 << 26  # bytes per read when a tensor is copied through unchanged


def copy_tensor_bytes(src: Path, name: str, dest: Path, *, dtype: torch.dtype | None) -> bool:
    """Write tensor ``name`` of the safetensors file ``src`` alone into a new safetensors file ``dest``,
    its bytes copied in chunks of ``COPY_CHUNK`` (never the whole tensor in memory). False, writing
    nothing, when the working ``dtype`` differs from the stored one (the caller converts it)."""
    from llmsculpt.io.headers import safetensors_entries

    start, entries = safetensors_entries(src)
    info = entries[name]
    stored = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(info["dtype"])
    if dtype is not None and stored is not None and stored != dtype:
        return False
    begin, end = info["data_offsets"]
    header = json.dumps({"__metadata__": {"format": "pt"},
                         name: {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [0, end - begin]}})
    header += " " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(src, "rb") as f, open(dest, "wb") as g:
        g.write(len(header).to_bytes(8, "little"))
        g.write(header.encode())
        f.seek(start + begin)
        left = end - begin
        while left:
            chunk = f.read(min(COPY_CHUNK, left))
            if not chunk:
                raise OSError(f"{src} ends inside tensor {name}")
            g.write(chunk)
            left -= len(chunk)
    return True


def _non_layer_names(model: nn.Module, spec) -> list[str]:
    """The checkpoint names outside the decoder layers (embedding, final norm, an untied lm_head)."""
    tied = get_path(model, spec.lm_head).weight is get_path(model, spec.embed).weight
    names = [n for n in model.state_dict() if not n.startswith(spec.layers + ".")]
    return [n for n in names if not (tied and n == f"{spec.lm_head}.weight")]


def _every_layer_biased(plan: Plan) -> dict[int, list[Update]]:
    """The plan's updates by layer, plus zero bias updates where a layer has none, so every kept
    layer ends with the same o_proj / down_proj biases (as surgery's whole-model path gives them)."""
    by_layer: dict[int, list[Update]] = {}
    for u in plan.updates:
        by_layer.setdefault(u.layer, []).append(u)
    for module in {u.module for u in plan.updates if u.param == "bias"}:
        like = next(u for u in plan.updates if u.param == "bias" and u.module == module)
        for lp in plan.layers:
            if not lp.drop and not any(u.module == module and u.param == "bias" for u in by_layer.get(lp.index, [])):
                by_layer.setdefault(lp.index, []).append(replace(like, layer=lp.index, op="add",
                                                                 value=torch.zeros_like(like.value)))
    return by_layer
