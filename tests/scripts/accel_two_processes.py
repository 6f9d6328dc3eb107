"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: an uninterrupted
Adapt-Accel run, then one killed mid-phase and resumed; every process saves its final weights."""

import sys
from pathlib import Path

import torch

from llmsculpt.methods.adapt_accel import Interrupted, run_accel
from llmsculpt.train.distributed import Processes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _runs import accel_case  # noqa: E402

out = Path(sys.argv[1])
procs = Processes()
rank = procs.rank
model, tok, examples, cfg = accel_case(out / f"data-{rank}.txt")  # one file per process: accel_case writes it
full, plan, log = run_accel(model, tok, examples, cfg, checkpoint_dir=out / "full", progress=False)
torch.save({"state": full.state_dict(), "log": log, "plan": plan.to_dict(), "world": procs.world,
            "backend": torch.distributed.get_backend()}, out / f"full-{rank}.pt")
model, tok, examples, cfg = accel_case(out / f"data-{rank}.txt")  # one file per process: accel_case writes it
try:
    run_accel(model, tok, examples, cfg, checkpoint_dir=out / "cut", progress=False, stop_after=len(log) - 2)
except Interrupted:
    pass
model, tok, examples, cfg = accel_case(out / f"data-{rank}.txt")  # one file per process: accel_case writes it
resumed, _, rlog = run_accel(model, tok, examples, cfg, checkpoint_dir=out / "cut", progress=False, resume=True)
torch.save({"state": resumed.state_dict(), "log": rlog}, out / f"resumed-{rank}.pt")
