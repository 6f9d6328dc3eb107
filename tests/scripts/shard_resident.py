"""Run by tests/test_shard_resident.py under ``torchrun --nproc_per_node N``.

``shard_resident.py OUT FAMILIES CKPT``: for each tiny family (saved to OUT/<family> by the main
process), the shard-resident model (run/shards.py): loaded as shards (each process reads its rows),
gathered back, pruned by ``reshard`` with a plan that drops a layer, cuts a K/V group, half an MLP and
hidden channels and adds a bias update, and scored for perplexity through the sharded forward; the
main process saves the gathered tensors and the numbers to OUT/shards.pt. Then ``llmsculpt.prune``
of the checkpoint directory CKPT with hidden channels, launched (api/_sharded.py), with every way of assembling a whole
gradient or a whole host copy disabled (a call raises); every process checks that its plain model
stayed a meta skeleton, and the main process saves the pruned model to OUT/pruned and its report
to OUT/pruned.json, with the most decoder layers whose gradient shards were alive at once (the
engine reduces each layer's as soon as FSDP2 has reduce-scattered it)."""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import llmsculpt
import llmsculpt.measure.sharded as sharded
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.plan import Update
from llmsculpt.run import fsdp
from llmsculpt.run.processes import Processes
from llmsculpt.run.shards import full_units, load_shards, nll_through, reshard
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing.tiny import tiny_model, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _plans import mixed_plan  # noqa: E402

out, families, ckpt = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
procs = Processes(shard=True)
tok = tiny_tokenizer()
text = "the quick brown fox jumps over the lazy dog " * 30
results = {}
for family in families:
    where = out / family
    if procs.is_main:
        tiny_model(family).save_pretrained(where)
    procs.barrier()
    model, net = load_shards(where, dtype=torch.float32, device=torch.device("cpu"))
    loaded = {k: v for unit in full_units(net, model, keep=procs.is_main) for k, v in unit.items()}
    ppl = perplexity(net, tok, text, seq_len=16, max_windows=6, nll=nll_through).ppl
    plan = mixed_plan(architecture(model))
    plan.updates = [Update(layer=0, module="down_proj", param="bias", op="add",  # FLAP-style compensation
                           value=torch.linspace(-1, 1, len(plan.hidden)))]
    pruned = apply_plan(copy.deepcopy(model), plan)
    net = reshard(net, model, plan, pruned, torch.device("cpu"))
    after = {k: v for unit in full_units(net, pruned, keep=procs.is_main) for k, v in unit.items()}
    ppl_after = perplexity(net, tok, text, seq_len=16, max_windows=6, nll=nll_through).ppl
    results[family] = {"loaded": loaded, "pruned": after, "ppl": ppl, "ppl_after": ppl_after,
                       "arch": architecture(pruned).to_dict()}
if procs.is_main:
    torch.save(results, out / "shards.pt")


def refuse(*args, **kwargs):
    raise AssertionError("a whole gradient or a whole host copy was assembled")


sharded._full = refuse  # whole gradients (measure/sharded.py gathers them only through this)
held = []  # at every reduction: the decoder layers whose gradient shards are alive then
reduce_shard = sharded.ShardedEngine._reduce_shard


def watched_reduce(self, name, p, reducer, out):
    held.append(len({n.split(".")[2] for n, q in self.net.named_parameters()
                     if n.startswith("model.layers.") and q.grad is not None and hasattr(q.grad, "to_local")}))
    return reduce_shard(self, name, p, reducer, out)


sharded.ShardedEngine._reduce_shard = watched_reduce
fsdp.gather_grads = fsdp.gather_weights = fsdp.shard = refuse  # the host-copy plumbing of training runs
outcome = llmsculpt.prune(ckpt, method="adaptive", ratio=0.3, hidden=0.25, n_samples=6, seq_len=32, out=out / "pruned",
                          eval_text="the quick brown fox jumps over the lazy dog. " * 40, eval_windows=8)
assert all(p.is_meta for p in outcome.model.parameters()), "a process holds weights outside its shards"
if outcome.main:
    (out / "pruned.json").write_text(json.dumps({k: outcome.report[k] for k in
                                                 ("processes", "ppl_before", "ppl_after", "params_after")}
                                                | {"layers_held": max(held), "reductions": len(held)}))
dist.destroy_process_group()
