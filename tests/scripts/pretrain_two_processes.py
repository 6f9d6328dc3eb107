"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: pruning-aware training
(OBS on, checkpointing), then the same run killed after 7 steps and resumed.
``pretrain_two_processes.py OUT [ddp|fsdp]``: every process saves its final weights and log
(sharded: the other processes hold none, only a meta-device skeleton)."""

import json
import sys
from pathlib import Path

import torch

from llmsculpt.run import Interrupted, pretrain_prune
from llmsculpt.run.processes import Processes
from llmsculpt.run.fsdp import is_meta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _runs import pretrain_case  # noqa: E402

out = Path(sys.argv[1])
shard = len(sys.argv) > 2 and sys.argv[2] == "fsdp"
rank = Processes().rank
model, tok, examples, cfg = pretrain_case()
model, plan, log = pretrain_prune(model, tok, examples, cfg, checkpoint_dir=out / "ckpt", checkpoint_every=3,
                                  progress=False, shard=shard)
state = {} if is_meta(model) else model.state_dict()
torch.save({"state": state, "meta": is_meta(model), "log": log, "plan": plan.to_dict()}, out / f"pretrain-{rank}.pt")
model, tok, examples, cfg = pretrain_case()
try:
    pretrain_prune(model, tok, examples, cfg, checkpoint_dir=out / "cut", checkpoint_every=3, progress=False,
                   shard=shard, stop_after=7)
except Interrupted:
    pass
cut_at = json.loads((out / "cut" / "last" / "state.json").read_text())["step"]
model, tok, examples, cfg = pretrain_case()
model, _, log = pretrain_prune(model, tok, examples, cfg, checkpoint_dir=out / "cut", checkpoint_every=3,
                               progress=False, shard=shard, resume=True)
state = {} if is_meta(model) else model.state_dict()
torch.save({"state": state, "log": log, "cut_at": cut_at}, out / f"resumed-{rank}.pt")
