"""Shard-resident models: a run on several processes in which no process ever holds the whole model.

The plain model is a meta-device skeleton on *every* process (shapes, the config and the rotary
tables; no weights), and the decoder layers' weights exist only as FSDP2 shards (each layer one unit,
1/N of every tensor per process). The root unit (embedding, final norm, lm_head) is replicated
instead: FSDP2 would hold it gathered for the whole pass anyway, so sharding it only added an
all-gather buffer and a shard to the whole copy (measured on the 0.5B Qwen2 shape, a tied 151k
embedding of 28 % of the weights: the 2-process peak above the 1-process one). Its few scored
gradients (hidden-channel pruning) are summed over processes by measure/sharded.py.

- :func:`load_shards` builds the skeleton from ``config.json`` and fills each process's shards
  straight from the safetensors files, reading only its own rows of each layer tensor;
- :func:`reshard` applies a plan that every process holds: one unit at a time, that unit's
  whole tensors are gathered (collective), the plan is applied to a copy of the skeleton in which
  only that unit is materialised (``surgery.apply_plan`` itself, so the result is the one a single
  process computes), and each process keeps its rows of the pruned tensors in a new sharded copy
  built from the pruned skeleton; a unit the plan leaves as it is (the root unit without hidden
  channel pruning, a layer it does not touch) keeps its shards without any gather. Peak per
  process: its shards of the old and the new model plus one unit's whole tensors, dense and pruned;
- :func:`full_units` gathers the pruned model unit by unit for the main process to write.

Scores never need whole tensors either: measure/sharded.py reduces each shard's gradient to group
scores where it lives. So the per-process peak falls with the number of processes.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.models.spec import spec_for


def empty_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """An FSDP2 copy of ``model`` (whose parameters may be on the meta device) with uninitialised
    shards on ``device`` and ``model``'s buffers (the rotary tables) copied in. Each decoder layer
    is one sharded unit; the rest (embedding, final norm, lm_head) is the root, whose parameters
    FSDP2 ignores (replicated: see the module docstring); tied weights stay tied."""
    from torch.distributed.fsdp import fully_shard

    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    net = copy.deepcopy(model, memo)  # parameters start on meta: no second copy of any weight
    layers = spec_for(model).decoder_layers(net)
    for layer in layers:
        fully_shard(layer)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    fully_shard(net, ignored_params={p for p in net.parameters() if id(p) not in in_layers})
    net.to_empty(device=device)
    if getattr(net.config, "tie_word_embeddings", False):  # to_empty gave the replicated lm_head its own tensor
        net.tie_weights()
    plain = dict(model.named_buffers())
    for name, buffer in net.named_buffers():  # not in the state dict; emptied by to_empty
        if not plain[name].is_meta:
            buffer.data.copy_(plain[name])
    return net


def local_rows(p) -> slice:
    """The rows of the full tensor that this process's shard of ``p`` holds (FSDP2 shards dim 0 as
    ``torch.chunk`` does: the last shards may be short or empty); all of a replicated one's."""
    if not is_sharded(p):
        return slice(0, p.shape[0])
    return rows_of(p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank())


def rows_of(rows: int, world: int, rank: int) -> slice:
    """The rows of a ``rows``-row tensor that ``rank`` of ``world`` processes holds when dim 0 is
    split as FSDP2 splits it (``torch.chunk``: the last shards may be short or empty)."""
    chunk = math.ceil(rows / world)
    start = min(rows, rank * chunk)
    return slice(start, min(rows, start + chunk))


def is_sharded(p) -> bool:
    """Whether ``p`` (a parameter or its gradient) is an FSDP2 shard (a DTensor), not replicated."""
    return hasattr(p, "to_local")


def local(p) -> torch.Tensor:
    """This process's part of ``p``: its shard's rows, or the whole of a replicated tensor."""
    return p.to_local() if is_sharded(p) else p


def whole(p) -> torch.Tensor:
    """The whole tensor ``p``: a shard's gathered (collective), a replicated one as it is."""
    return p.full_tensor() if is_sharded(p) else p.detach()


def _fill(p, rows: torch.Tensor) -> None:
    local_part = local(p)
    if local_part.shape != rows.shape:
        raise SculptError(f"internal: a shard of {tuple(p.shape)} holds {tuple(local_part.shape)}, "
                          f"expected {tuple(rows.shape)}")
    with torch.no_grad():
        local_part.copy_(rows)


STORED = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def read_rows(path: Path, start: int, entry: dict, rows: slice) -> torch.Tensor:
    """Rows ``rows`` (dim 0) of a tensor of a safetensors file, read as just those bytes: the data is
    row-major, so the rows are one contiguous range (safetensors' own slicing read the whole file's
    pages here: every process would have held the whole model for a moment)."""
    dtype = STORED.get(entry["dtype"])
    if dtype is None:
        raise SculptError(f"{path}: tensors stored as {entry['dtype']} cannot be read as shards")
    shape = list(entry["shape"])
    row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
    begin = start + entry["data_offsets"][0] + rows.start * row_bytes
    count = (rows.stop - rows.start) * row_bytes
    with open(path, "rb") as f:
        f.seek(begin)
        data = bytearray(f.read(count))
    if len(data) != count:
        raise SculptError(f"{path} ends inside a tensor: is the file complete?")
    out = torch.frombuffer(data, dtype=dtype) if count else torch.empty(0, dtype=dtype)
    return out.reshape([rows.stop - rows.start, *shape[1:]])


def load_shards(directory: str | Path, *, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(skeleton, sharded net) of the safetensors checkpoint ``directory``, in ``dtype``; each process
    reads only its rows of every tensor, so none ever holds the whole model. Collective only in
    building the FSDP units (every process calls it)."""
    from llmsculpt.io.headers import safetensors_entries
    from llmsculpt.models.meta import check_weight_shapes, meta_skeleton
    from llmsculpt.models.residency import weight_files

    files = weight_files(directory)
    headers = {path: safetensors_entries(path) for path in set(files.values())}
    model = meta_skeleton(directory, dtype)
    check_weight_shapes(model, {n: tuple(e["shape"]) for _, entries in headers.values() for n, e in entries.items()},
                        where=str(directory))
    net = empty_copy(model, device)
    for name, p in net.named_parameters():  # a tied lm_head is the embedding: listed once
        if name not in files:
            raise SculptError(f"{directory}: tensor {name!r} is missing from the safetensors files")
        start, entries = headers[files[name]]
        part = read_rows(files[name], start, entries[name], local_rows(p))
        _fill(p, part.to(device=p.device, dtype=dtype))
        del part
    return model, net


def resharded(net: nn.Module) -> nn.Module:
    """``net`` with every unit back in its sharded state (a unit may stay gathered after a forward
    or a backward that did not finish, and its parameters are then plain tensors without ``full_tensor``)."""
    from torch.distributed.fsdp import FSDPModule

    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return net


def _units(spec, names: list[str], n_layers: int) -> list[list[str]]:
    """Parameter names grouped by FSDP unit: each decoder layer, then the root unit (the rest)."""
    prefix = spec.layers + "."
    units = [[n for n in names if n.startswith(f"{prefix}{i}.")] for i in range(n_layers)]
    return units + [[n for n in names if not n.startswith(prefix)]]


def _materialised(skeleton: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``skeleton`` in which ``tensors`` (one unit's) are real and the rest stays on meta."""
    work = copy.deepcopy(skeleton)
    tied = getattr(work.config, "tie_word_embeddings", False)
    work.load_state_dict(tensors, strict=False, assign=True)
    if tied:
        work.tie_weights()
    return work


def _untouched(plan, skeleton: nn.Module, n_layers: int) -> set[int]:
    """Units (layer indices; ``n_layers`` for the root unit) whose tensors ``plan`` leaves as they are:
    none when it drops a layer (names move) or adds a bias (every layer gains one); without hidden
    channel pruning the root unit, and every layer whose plan keeps all of it."""
    from llmsculpt.plan import Plan
    from llmsculpt.structures.shapes import architecture

    arch = architecture(skeleton)
    if any(lp.drop for lp in plan.layers) or any(u.param == "bias" for u in plan.updates):
        return set()
    if plan.hidden is not None and len(plan.hidden) != arch.hidden:
        return set()
    keep = Plan.keep_all(arch)
    changed = {u.layer for u in plan.updates}
    return {i for i in range(n_layers) if plan.layers[i] == keep.layers[i] and i not in changed} | {n_layers}


def reshard(net: nn.Module, skeleton: nn.Module, plan, pruned: nn.Module, device: torch.device) -> nn.Module:
    """The sharded copy of ``pruned`` (``skeleton`` with ``plan`` applied, on meta) whose shards hold
    ``net``'s weights with ``plan`` applied; every process holds ``plan``. One unit's whole tensors
    at a time (collective; see the module docstring)."""
    from llmsculpt.surgery import apply_plan

    old = dict(resharded(net).named_parameters())
    new = empty_copy(pruned, device)
    targets = dict(new.named_parameters())
    filled: set[str] = set()
    n_layers = len(list(spec_for(skeleton).decoder_layers(skeleton)))
    untouched = _untouched(plan, skeleton, n_layers)
    for k, names in enumerate(_units(spec_for(skeleton), list(old), n_layers)):
        if k in untouched:  # same tensors, same shapes, so the same rows here: no gather at all
            for name in names:
                if is_sharded(old[name]):
                    _fill(targets[name], local(old[name]).detach())
                else:  # replicated (the root unit): the new net takes the old tensor itself, no copy
                    targets[name].data = old.pop(name).data
                filled.add(name)
            continue
        tensors = {n: whole(old[n]) for n in names}  # every process takes part in each gather
        work = apply_plan(_materialised(skeleton, tensors), plan)
        del tensors
        for name, t in work.named_parameters():
            if t.is_meta or name in filled:
                continue
            if name not in targets:
                raise SculptError(f"internal: the plan made {name!r}, which the pruned skeleton lacks")
            _fill(targets[name], t.detach()[local_rows(targets[name])].to(targets[name].dtype))
            filled.add(name)
        del work
    if filled != targets.keys():
        raise SculptError(f"internal: resharding left {sorted(targets.keys() - filled)[:3]} unfilled")
    _release(old)
    return new


def _release(params: dict[str, torch.Tensor]) -> None:
    """Free the storage of a replaced net's shards now: FSDP2's state keeps the net reachable until a
    later forward of another root (measured: one step's old net alive beside the new one)."""
    for p in params.values():
        p.grad = None
        local(p).untyped_storage().resize_(0)


def full_units(net: nn.Module, model: nn.Module, *, keep: bool) -> Iterator[dict[str, torch.Tensor]]:
    """``net``'s whole tensors, one FSDP unit at a time, as checkpoint names -> CPU tensors (empty
    dicts where not ``keep``). Collective: every process iterates to the end."""
    params = dict(resharded(net).named_parameters())
    names = list(params)
    n_layers = len(list(spec_for(model).decoder_layers(model)))
    for unit in _units(spec_for(model), names, n_layers):
        tensors = {n: whole(params[n]) for n in unit}
        # a replicated tensor is the net's own: a copy, which outlives a later reshard's release
        copied = {n: t.cpu() if is_sharded(params[n]) else t.to("cpu", copy=True)
                  for n, t in tensors.items()} if keep else {}
        yield copied
        del tensors, copied


def through_forward(net: nn.Module, fn, ids: torch.Tensor) -> torch.Tensor:
    """``fn(net, ids)`` run as ``net``'s forward, so that the hooks FSDP2 registered on ``net`` fire
    around it (they gather the root unit: embedding, final norm, lm_head) while ``fn`` calls the
    decoder and the head apart, as the chunked losses of eval/chunked_loss.py do: never a batch ×
    seq × vocabulary of logits (a 150k vocabulary makes that a GB per 4 × 128 tokens). Collective."""
    net.forward = lambda *args, **kwargs: fn(net, ids)  # an instance attribute, over the class's forward
    try:
        return net(ids)
    finally:
        del net.forward


def nll_through(net: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Σ −log p of the batch's next tokens through the sharded ``net`` (perplexity's ``nll``). Collective."""
    from llmsculpt.eval.chunked_loss import nll_sum

    return through_forward(net, nll_sum, ids)
