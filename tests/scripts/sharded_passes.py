"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: Adapt-Pruner's measuring
pass on a sharded model (5 calibration samples: 3 on one process, 2 on the other, micro-batches of 2
so one process runs a weightless spare pass); the main process saves what it received."""

import sys
from pathlib import Path

import torch

from llmsculpt.importance.base import GRAD
from llmsculpt.testing.tiny import tiny_model
from llmsculpt.train.distributed import Processes
from llmsculpt.train.sharded import ShardedPasses

out = Path(sys.argv[1])
procs = Processes(shard=True)
model = tiny_model("tiny-llama")
batch = torch.randint(4, 128, (5, 16), generator=torch.Generator().manual_seed(3))
net = procs.wrap(model)
passes = ShardedPasses(procs, net, micro_batch=2)
stats, importance = passes.measure(model, batch, {GRAD}, distance="cosine")
if procs.is_main:
    torch.save({"grad": stats.grad, "loss": stats.loss, "importance": importance}, out / "passes.pt")
else:
    assert not stats.grad  # only the main process receives whole gradients
