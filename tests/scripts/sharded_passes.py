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
# with a reducer, each process reduces its own shards: no whole gradient may be assembled anywhere
import llmsculpt.measure.sharded as sharded  # noqa: E402
from llmsculpt.importance import get_metric  # noqa: E402
from llmsculpt.importance.groups import GroupReducer  # noqa: E402


def no_gather(grad):
    raise AssertionError("a whole gradient was gathered")


sharded._full = no_gather
metrics = [get_metric("taylor"), get_metric("taylor_vector")]
reduced = engine.measure(model, batch, Needs(grad=True), reducer=GroupReducer(model, metrics)).reduced
if procs.is_main:
    torch.save({"grad": m.grad, "loss": m.loss, "importance": m.layer, "reduced": reduced}, out / "passes.pt")
else:
    assert not m.grad and not reduced  # only the main process receives gradients, or their vectors
