"""Adapt-Accel and pruning-aware training on 2 CPU processes (torchrun, gloo, DDP through
accelerate): pruning decided on the main process is applied identically everywhere, the result
equals a single-process run, and a run killed mid-phase resumes to the same weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmsculpt.methods.adapt_accel import run_accel
from llmsculpt.pretrain.loop import pretrain_prune
from llmsculpt.train.distributed import Processes
from llmsculpt.train.data import Example

from _runs import accel_case, pretrain_case

SCRIPTS = Path(__file__).parent / "scripts"


def _same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max())


def _torchrun(script: str, out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPTS / script),
         str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun("accel_two_processes.py", out)
    return {name: torch.load(out / f"{name}.pt") for name in ("full-0", "full-1", "resumed-0", "resumed-1")}


def test_all_processes_hold_the_same_pruned_model(two_process_run):
    assert [two_process_run[f"full-{r}"]["world"] for r in (0, 1)] == [2, 2]
    assert two_process_run["full-0"]["backend"] == "gloo"
    _same(two_process_run["full-0"]["state"], two_process_run["full-1"]["state"], atol=0)
    assert two_process_run["full-0"]["log"] == two_process_run["full-1"]["log"]  # the averaged loss


def test_two_processes_equal_one(two_process_run, tmp_path):
    model, tok, examples, cfg = accel_case(tmp_path / "data.txt")
    single, plan, log = run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "single", progress=False)
    ddp = two_process_run["full-0"]
    assert ddp["plan"] == plan.to_dict()
    assert [e["params"] for e in ddp["log"]] == [e["params"] for e in log]
    assert [e["loss"] for e in ddp["log"]] == pytest.approx([e["loss"] for e in log], rel=1e-4)
    _same(ddp["state"], single.state_dict(), atol=1e-4)


def test_two_process_resume_equals_uninterrupted(two_process_run):
    for rank in (0, 1):
        _same(two_process_run[f"resumed-{rank}"]["state"], two_process_run["full-0"]["state"], atol=1e-6)
        assert [e["step"] for e in two_process_run[f"resumed-{rank}"]["log"]] == [e["step"] for e in two_process_run["full-0"]["log"]]


def test_batch_shares_reproduce_the_token_mean(monkeypatch):
    procs = Processes()
    batch = [Example([1] * n, [1] * n) for n in (5, 9, 3)]
    assert procs.my_share(batch) == (batch, 1.0)
    shares = []
    for rank in (0, 1):  # as seen by each of 2 processes
        monkeypatch.setattr(Processes, "world", property(lambda self: 2))
        monkeypatch.setattr(Processes, "rank", property(lambda self, r=rank: r))
        shares.append(procs.my_share(batch))
    (mine0, f0), (mine1, f1) = shares
    assert mine0 == [batch[0], batch[2]] and mine1 == [batch[1]]
    assert (f0 + f1) / 2 == pytest.approx(1.0) and f0 == pytest.approx(2 * (4 + 2) / 14)
    monkeypatch.setattr(Processes, "rank", property(lambda self: 1))
    assert procs.my_share(batch[:1]) == ([batch[0]], 0.0)  # nothing left for process 1: weight 0


def test_pruning_aware_training_on_two_processes_equals_one(tmp_path):
    _torchrun("pretrain_two_processes.py", tmp_path)
    ranks = [torch.load(tmp_path / f"pretrain-{r}.pt") for r in (0, 1)]
    _same(ranks[0]["state"], ranks[1]["state"], atol=0)
    model, tok, examples, cfg = pretrain_case()
    single, plan, log = pretrain_prune(model, tok, examples, cfg, progress=False)
    assert ranks[0]["plan"] == plan.to_dict()
    assert [(e["type"], e["params"]) for e in ranks[0]["log"]] == [(e["type"], e["params"]) for e in log]
    assert [e["loss"] for e in ranks[0]["log"]] == pytest.approx([e["loss"] for e in log], rel=1e-4)
    _same(ranks[0]["state"], single.state_dict(), atol=1e-4)
    assert (tmp_path / "ckpt" / "last" / "state.json").is_file()


def test_sharded_engines_are_refused_with_a_reason(monkeypatch):
    import accelerate
    from accelerate.utils import DistributedType

    from llmsculpt.errors import SculptError

    class FakeAccelerator:
        def __init__(self, **kwargs):
            self.distributed_type = DistributedType.FSDP

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    with pytest.raises(SculptError, match="FSDP is not supported.*whole weight matrices"):
        Processes()
