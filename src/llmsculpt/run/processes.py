"""Several processes, one run: data-parallel training with accelerate (DDP), pruning decided once.

A run launched with ``torchrun --nproc_per_node N`` (CPU, gloo) or ``accelerate launch
--num_processes N`` (GPUs) sees ``WORLD_SIZE > 1`` and trains data-parallel: every process takes its
slice of each global batch, gradients are averaged by DDP, and all processes hold the same weights.
Pruning is decided on the main process only; the others receive its plan and apply the same surgery,
and re-wrapping the pruned model in DDP copies the main process's weights to all of them (DDP
broadcasts module state when it is built), so any weight change a method made travels too.
Only the main process writes checkpoints, logs and outputs; the others wait at a barrier.

With ``shard=True`` (or an accelerate FSDP config) training is fully sharded instead (FSDP2, see
run/fsdp.py): weights, gradients and optimiser state are split over the processes, and the main
process gathers whole weights only to prune and to checkpoint.

Each process loads its model onto its own device: ``process_device()`` says which (``cuda:LOCAL_RANK``,
or the CPU; a sharded run's host copy on the CPU), before anything is loaded.

In a single process (the default) nothing here touches torch.distributed. This module and run/fsdp.py
are the only ones that look at the launcher's environment (``RANK``, ``WORLD_SIZE``) or at
torch.distributed: everything else asks a ``Processes`` or ``is_main_process()``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.run import fsdp
from llmsculpt.train.data import IGNORE, Example


def timeout_from_env() -> "timedelta":
    """How long a process waits in a collective: the others wait there while the main process prunes,
    which for a large model takes far longer than torch's default (10-30 min). ``SCULPT_DIST_TIMEOUT``
    in minutes; default 120."""
    from datetime import timedelta

    raw = os.environ.get("SCULPT_DIST_TIMEOUT", "120")
    try:
        minutes = float(raw)
    except ValueError:
        raise SculptError(f"SCULPT_DIST_TIMEOUT must be a number of minutes, got {raw!r}") from None
    if minutes <= 0:
        raise SculptError(f"SCULPT_DIST_TIMEOUT must be positive, got {raw!r}")
    return timedelta(minutes=minutes)


def world_size_from_env() -> int:
    """How many processes the launcher (torchrun / accelerate launch) started; 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a launched run: the process that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def process_device(requested: str | torch.device | None = None, *, shard: bool = False) -> torch.device:
    """Where this process should load its model, decided from the launcher's environment before
    anything is loaded (call it before ``load()``; the Accelerator does not exist yet).

    One process: ``requested`` as ``--device`` means it (auto: CUDA when present). A launched run
    (``WORLD_SIZE > 1``): each process its own GPU, ``cuda:LOCAL_RANK``, when CUDA is present (for
    ``auto`` or ``cuda``), else the CPU; a sharded run (``shard``) loads on the CPU, where the main
    process keeps its host copy (the shards go to the GPUs when the model is wrapped).
    """
    from llmsculpt.models.placement import resolve_device

    if world_size_from_env() == 1:
        return resolve_device(requested)
    name = "auto" if requested is None else str(requested).lower()
    if shard or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise SculptError(f"--device {requested} names one device, but this run has {world_size_from_env()} "
                          "processes, each on its own GPU (LOCAL_RANK): use --device auto (or cuda, or cpu)")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise SculptError("--device cuda asked for, but CUDA is not available here; use --device cpu")
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


class Processes:
    """The process group of this run (one process unless launched by torchrun/accelerate)."""

    def __init__(self, *, shard: bool = False) -> None:
        self.accelerator = None
        self.sharded = False
        if world_size_from_env() > 1:
            from accelerate import Accelerator
            from accelerate.utils import InitProcessGroupKwargs

            self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), device_placement=False,
                                           kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout_from_env())])
            kind = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
            if kind in ("DEEPSPEED", "MEGATRON_LM", "XLA"):
                raise SculptError(
                    f"{kind} is not supported: pruning needs the whole model on the process that decides it. "
                    "Launch with data parallelism (torchrun, or accelerate launch --multi_gpu) or with FSDP "
                    "(accelerate launch --use_fsdp, or torchrun ... --fsdp)"
                )
            # accelerate reports FSDP only on accelerators; its launcher's flag counts on CPU too
            self.sharded = shard or kind == "FSDP" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device this process should train on (None: leave the model where it is)."""
        return self.accelerator.device if self.accelerator else None

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on this process's device, moved only if it is not there already; in a sharded
        run the plain model is the main process's host copy and stays on (or goes to) the CPU, and
        the others' meta-device skeleton stays where it is."""
        target = torch.device("cpu") if self.sharded else self.device
        if self.sharded and not self.is_main and fsdp.is_meta(model):
            return model
        if target is None or all(_same_device(p.device, target) for p in model.parameters()):
            return model
        return model.to(target)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run forward/backward through: ``model`` itself in one process, DDP around it,
        or a sharded copy (FSDP2, see run/fsdp.py).

        Call again after every pruning (parameter shapes changed). Building DDP copies the main
        process's parameters and buffers to every process; building the sharded copy fills its shards
        from the main process's weights, and the other processes' plain ``model`` then goes to the
        meta device (shapes only).
        """
        if self.accelerator is None:
            return model
        if self.sharded:
            net = fsdp.shard(model, self.accelerator.device, is_main=self.is_main)
            if not self.is_main and not fsdp.is_meta(model):
                fsdp.to_meta(model)
            return net
        return self.accelerator.prepare_model(model)

    def sync(self, net: nn.Module, model: nn.Module, *, grads: bool = False) -> None:
        """Bring the main process's plain ``model`` up to date with the trained ``net`` (sharded runs;
        in the others they share their parameters), with ``grads`` also its gradients. Collective."""
        if self.sharded:
            fsdp.gather_weights(net, model, is_main=self.is_main)
            if grads:
                fsdp.gather_grads(net, model, is_main=self.is_main)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """``optimizer.state_dict()`` with full-size moments (sharded runs gather them, and only the
        main process gets them: None on the others). Collective."""
        if self.sharded:
            return fsdp.gather_optimizer_state(optimizer, is_main=self.is_main)
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict | None) -> None:
        """Inverse of ``optimizer_state``; in sharded runs only the main process's ``state`` is read."""
        if self.sharded:
            fsdp.load_optimizer_state(optimizer, state, is_main=self.is_main)
        else:
            optimizer.load_state_dict(state)

    def share(self, obj):
        """The main process's ``obj`` on every process (picklable objects)."""
        if self.accelerator is None:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def mean(self, value: float) -> float:
        """Average of a scalar over processes (the logged loss)."""
        if self.accelerator is None:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="mean").item())

    def sum_over_processes(self, tensors: dict) -> dict:
        """Element-wise sums over processes of a dict of tensors (statistics such as X Xᵀ of each
        process's slice of the batch add up to those of the whole batch)."""
        if self.accelerator is None:
            return tensors
        out = {}
        for key in sorted(tensors):
            t = tensors[key].to(self.accelerator.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
            out[key] = t.to(tensors[key].device)
        return out

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def my_share(self, batch: list[Example]) -> tuple[list[Example], float]:
        """This process's examples of a global batch and the factor to scale its loss by, so that the
        DDP average of the scaled per-process losses equals the token-mean loss of the whole batch
        (what a single process computes): factor = world · own label tokens / batch label tokens.

        A batch smaller than the number of processes (the tail of a phase) leaves some processes
        without an example; they step on a copy with factor 0, so every process runs the same
        collective operations and the gradient is still exactly the batch's.
        """
        if not batch:
            raise SculptError("empty batch")
        if self.world == 1:
            return batch, 1.0
        mine = batch[self.rank :: self.world]
        if not mine:
            return [batch[0]], 0.0
        total = sum(_label_tokens(e) for e in batch)
        return mine, self.world * sum(_label_tokens(e) for e in mine) / max(total, 1)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _label_tokens(example: Example) -> int:
    """Positions that count in the causal-LM loss (labels are shifted by one)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE)
