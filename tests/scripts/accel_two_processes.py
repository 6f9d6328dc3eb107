"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: an uninterrupted
Adapt-Accel run, then one killed mid-phase and resumed.

``accel_two_processes.py OUT [ddp|fsdp|fsdp-carry|fsdp-bf16|ddp-flap]``: data-parallel (every process
saves its final weights), sharded (the main process saves them; the others report that they hold
none), sharded with AdamW moments carried across pruning and distillation from the original model,
sharded in bf16 (fp32 master weights inside the sharded optimiser, carried too), or data-parallel
with FLAP (whose plans add biases and update them: the others apply its shapes and receive its
values), uninterrupted only."""

import shutil
import sys
from pathlib import Path

import torch

from llmsculpt.run import Interrupted, run_accel
from llmsculpt.run.processes import Processes
from llmsculpt.run.fsdp import is_meta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _runs import accel_case  # noqa: E402

out = Path(sys.argv[1])
variant = sys.argv[2] if len(sys.argv) > 2 else "ddp"
shard = variant.startswith("fsdp")
overrides = {"fsdp-carry": {"optimizer_state": "carry", "distill": True},
             "fsdp-bf16": {"optimizer_state": "carry"},
             "ddp-flap": {"prune_method": "flap"}}.get(variant, {})
procs = Processes()
rank = procs.rank


def case():
    model, *rest = accel_case(out / f"data-{rank}.txt", **overrides)  # one file per process: accel_case writes it
    return (model.to(torch.bfloat16) if variant.endswith("bf16") else model, *rest)


def saved(model) -> dict:
    return {} if is_meta(model) else {k: v.detach().cpu() for k, v in model.state_dict().items()}


model, tok, examples, cfg = case()
full, plan, log = run_accel(model, tok, examples, cfg, checkpoint_dir=out / "full", progress=False, shard=shard)
group = torch.distributed.distributed_c10d._get_default_group()
timeout = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
torch.save({"state": saved(full), "meta": is_meta(full), "log": log, "plan": plan.to_dict(), "world": procs.world,
            "backend": torch.distributed.get_backend(), "timeout_s": timeout}, out / f"full-{rank}.pt")
if variant == "ddp-flap":
    sys.exit(0)
model, tok, examples, cfg = case()
try:
    run_accel(model, tok, examples, cfg, checkpoint_dir=out / "cut", progress=False, stop_after=len(log) - 2, shard=shard)
except Interrupted:
    pass
if shard and rank == 0:  # the sharded run's checkpoint, for a single process to resume (test)
    shutil.copytree(out / "cut", out / "cut-for-one")
procs.barrier()
model, tok, examples, cfg = case()
resumed, _, rlog = run_accel(model, tok, examples, cfg, checkpoint_dir=out / "cut", progress=False, resume=True,
                             shard=shard)
torch.save({"state": saved(resumed), "log": rlog}, out / f"resumed-{rank}.pt")
