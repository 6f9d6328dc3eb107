"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: pruning-aware training
(OBS on, checkpointing); every process saves its final weights and log."""

import sys
from pathlib import Path

import torch

from llmsculpt.pretrain.loop import pretrain_prune
from llmsculpt.train.distributed import Processes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _runs import pretrain_case  # noqa: E402

out = Path(sys.argv[1])
rank = Processes().rank
model, tok, examples, cfg = pretrain_case()
model, plan, log = pretrain_prune(model, tok, examples, cfg, checkpoint_dir=out / "ckpt", checkpoint_every=3,
                                  progress=False)
torch.save({"state": model.state_dict(), "log": log, "plan": plan.to_dict()}, out / f"pretrain-{rank}.pt")
