"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: Adapt-Pruner's measuring
pass on a sharded model (5 calibration samples: 3 on one process, 2 on the other, micro-batches of 2
so one process runs a weightless spare pass); the main process saves what it received."""

import sys
from pathlib import Path

import torch

from llmsculpt.measure import Needs
from llmsculpt.measure.sharded import ShardedEngine
from llmsculpt.run.processes import Processes
from llmsculpt.testing.tiny import tiny_model

out = Path(sys.argv[1])
procs = Processes(shard=True)
model = tiny_model("tiny-llama")
batch = torch.randint(4, 128, (5, 16), generator=torch.Generator().manual_seed(3))
net = procs.wrap(model)
engine = ShardedEngine(procs, net, micro_batch=2)
m = engine.measure(model, batch, Needs(grad=True, layer_change="cosine"))
if procs.is_main:
    torch.save({"grad": m.grad, "loss": m.loss, "importance": m.layer}, out / "passes.pt")
else:
    assert not m.grad  # only the main process receives whole gradients
