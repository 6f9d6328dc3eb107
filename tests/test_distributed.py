"""Adapt-Accel and pruning-aware training on 2 CPU processes (torchrun, gloo): data-parallel (DDP
through accelerate) and, for Adapt-Accel, fully sharded (FSDP2). Pruning decided on the main process
is applied identically everywhere, the result equals a single-process run, and a run killed
mid-phase resumes to the same weights."""

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from llmsculpt.run import pretrain_prune, run_accel
from llmsculpt.run.processes import Processes
from llmsculpt.train.data import Example

from _runs import accel_case, pretrain_case

SCRIPTS = Path(__file__).parent / "scripts"


def _same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max())


def _torchrun(script: str, out: Path, *args: str, **env_vars: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent), **env_vars)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPTS / script),
         str(out), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _load_run(out: Path) -> dict:
    return {name: torch.load(out / f"{name}.pt") for name in ("full-0", "full-1", "resumed-0", "resumed-1")}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun("accel_two_processes.py", out, "ddp")
    return _load_run(out)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    _torchrun("accel_two_processes.py", out, "fsdp", SCULPT_DIST_TIMEOUT="7.5")
    return _load_run(out) | {"out": out}


def test_all_processes_hold_the_same_pruned_model(two_process_run):
    assert [two_process_run[f"full-{r}"]["world"] for r in (0, 1)] == [2, 2]
    assert two_process_run["full-0"]["backend"] == "gloo"
    assert two_process_run["full-0"]["timeout_s"] == 120 * 60  # others wait while the main process prunes
    _same(two_process_run["full-0"]["state"], two_process_run["full-1"]["state"], atol=0)
    assert two_process_run["full-0"]["log"] == two_process_run["full-1"]["log"]  # the averaged loss


def _equals_single_process(run: dict, tmp_path: Path, **overrides) -> None:
    model, tok, examples, cfg = accel_case(tmp_path / "data.txt", **overrides)
    single, plan, log = run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "single", progress=False)
    main = run["full-0"]
    assert main["plan"] == plan.to_dict()
    assert [e["params"] for e in main["log"]] == [e["params"] for e in log]
    assert [e["loss"] for e in main["log"]] == pytest.approx([e["loss"] for e in log], rel=1e-4)
    _same(main["state"], single.state_dict(), atol=1e-4)


def test_two_processes_equal_one(two_process_run, tmp_path):
    _equals_single_process(two_process_run, tmp_path)


def test_two_process_resume_equals_uninterrupted(two_process_run):
    for rank in (0, 1):
        _same(two_process_run[f"resumed-{rank}"]["state"], two_process_run["full-0"]["state"], atol=1e-6)
        assert [e["step"] for e in two_process_run[f"resumed-{rank}"]["log"]] == [e["step"] for e in two_process_run["full-0"]["log"]]


def test_sharded_run_equals_one_process_and_only_the_main_one_holds_weights(sharded_run, tmp_path):
    assert sharded_run["full-0"]["world"] == 2 and not sharded_run["full-0"]["meta"]
    assert sharded_run["full-0"]["timeout_s"] == 7.5 * 60  # SCULPT_DIST_TIMEOUT
    assert sharded_run["full-1"]["meta"] and sharded_run["full-1"]["state"] == {}  # a meta-device skeleton
    assert sharded_run["full-1"]["plan"] == sharded_run["full-0"]["plan"]
    _equals_single_process(sharded_run, tmp_path)


def test_sharded_resume_equals_uninterrupted(sharded_run):
    _same(sharded_run["resumed-0"]["state"], sharded_run["full-0"]["state"], atol=1e-6)
    assert [e["step"] for e in sharded_run["resumed-0"]["log"]] == [e["step"] for e in sharded_run["full-0"]["log"]]


def test_a_sharded_runs_checkpoint_resumes_in_one_process(sharded_run, tmp_path):
    """Checkpoints hold whole weights and full-size AdamW moments whatever the engine."""
    model, tok, examples, cfg = accel_case(tmp_path / "data.txt")
    resumed, _, log = run_accel(model, tok, examples, cfg, checkpoint_dir=sharded_run["out"] / "cut-for-one",
                                progress=False, resume=True)
    _same(resumed.state_dict(), sharded_run["full-0"]["state"], atol=1e-4)
    assert [e["step"] for e in log] == [e["step"] for e in sharded_run["full-0"]["log"]]


def test_sharded_measuring_pass_equals_the_local_one(tmp_path):
    """Adapt-Pruner's layer importance, loss and whole gradients from a sharded model over uneven
    slices of the calibration batch equal one process's."""
    from llmsculpt.measure import LocalEngine, Needs
    from llmsculpt.testing.tiny import tiny_model

    _torchrun("sharded_passes.py", tmp_path)
    got = torch.load(tmp_path / "passes.pt")
    model = tiny_model("tiny-llama")
    batch = torch.randint(4, 128, (5, 16), generator=torch.Generator().manual_seed(3))
    m = LocalEngine().measure(model, batch, Needs(grad=True, layer_change="cosine"))
    assert got["loss"] == pytest.approx(m.loss, rel=1e-5)
    assert torch.allclose(got["importance"], m.layer, atol=1e-6)
    _same(got["grad"], {k: v.detach() for k, v in m.grad.items()}, atol=1e-6)
    # the shard-local vectors (no whole gradient assembled: the script forbids the gather) equal the
    # vectors one process reduces from whole gradients
    from llmsculpt.importance import get_metric
    from llmsculpt.importance.groups import GroupReducer

    reducer = GroupReducer(model, [get_metric("taylor"), get_metric("taylor_vector")])
    local = LocalEngine().measure(model, batch, Needs(grad=True), reducer=reducer).reduced
    assert set(got["reduced"]) == set(local) and all(set(got["reduced"][k]) == set(local[k]) for k in local)
    for key in local:
        for vec, want in local[key].items():
            assert torch.allclose(got["reduced"][key][vec], want, rtol=1e-4, atol=1e-7), (key, vec)


@pytest.mark.slow  # ~40 s of two-process runs; the default run keeps the plain sharded and DDP cases
def test_sharded_run_carries_moments_and_distils_like_one_process(tmp_path):
    """optimizer_state=carry gathers the moments, carries them on the main process and scatters them."""
    out = tmp_path / "run"
    out.mkdir()
    _torchrun("accel_two_processes.py", out, "fsdp-carry")
    run = _load_run(out)
    _equals_single_process(run, tmp_path, optimizer_state="carry", distill=True)
    _same(run["resumed-0"]["state"], run["full-0"]["state"], atol=1e-6)


@pytest.mark.slow  # ~55 s; bf16 resume-exactness is also tested in one process (test_train.py)
def test_sharded_bf16_run_keeps_fp32_masters_and_resumes_exactly(tmp_path):
    """bf16 weights sharded: the fp32 masters live in the sharded optimiser, are gathered into the
    checkpoint and carried across pruning; the run follows the single-process bf16 one."""
    out = tmp_path / "run"
    out.mkdir()
    _torchrun("accel_two_processes.py", out, "fsdp-bf16")
    run = _load_run(out)
    assert {v.dtype for v in run["full-0"]["state"].values()} == {torch.bfloat16}
    _same(run["resumed-0"]["state"], run["full-0"]["state"], atol=0)
    model, tok, examples, cfg = accel_case(tmp_path / "t.txt", optimizer_state="carry")
    _, _, log = run_accel(model.to(torch.bfloat16), tok, examples, cfg, checkpoint_dir=tmp_path / "one",
                            progress=False)
    assert [e["loss"] for e in run["full-0"]["log"]] == pytest.approx([e["loss"] for e in log], rel=2e-2)
    # scores measured in bf16 through the shards differ from local ones by rounding, which can move a
    # channel at a tie: the same budget is reached, not necessarily the same channels
    assert [e["params"] for e in run["full-0"]["log"]] == pytest.approx([e["params"] for e in log], rel=0.02)


def test_flap_on_two_processes_equals_one(tmp_path):
    """FLAP's bias compensation is part of its plan: the other process builds the same shapes (zero
    biases) and receives the main process's values with its weights."""
    out = tmp_path / "run"
    out.mkdir()
    _torchrun("accel_two_processes.py", out, "ddp-flap")
    run = {name: torch.load(out / f"{name}.pt") for name in ("full-0", "full-1")}
    _same(run["full-0"]["state"], run["full-1"]["state"], atol=0)
    assert any(name.endswith("o_proj.bias") for name in run["full-0"]["state"])
    _equals_single_process(run, tmp_path, prune_method="flap")


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


@pytest.mark.parametrize("engine", ["ddp", "fsdp", pytest.param("accelerate-fsdp", marks=pytest.mark.slow)])
def test_pruning_aware_training_on_two_processes_equals_one(tmp_path, engine):
    if engine == "accelerate-fsdp":  # what `accelerate launch --use_fsdp` sets, without our --fsdp
        _torchrun("pretrain_two_processes.py", tmp_path, "ddp", ACCELERATE_USE_FSDP="true")
    else:
        _torchrun("pretrain_two_processes.py", tmp_path, engine)
    ranks = [torch.load(tmp_path / f"pretrain-{r}.pt") for r in (0, 1)]
    if engine == "ddp":
        _same(ranks[0]["state"], ranks[1]["state"], atol=0)
    else:
        assert ranks[1]["meta"] and not ranks[0]["meta"]
    assert ranks[1]["plan"] == ranks[0]["plan"]
    model, tok, examples, cfg = pretrain_case()
    single, plan, log = pretrain_prune(model, tok, examples, cfg, progress=False)
    assert ranks[0]["plan"] == plan.to_dict()
    assert [(e["type"], e["params"]) for e in ranks[0]["log"]] == [(e["type"], e["params"]) for e in log]
    assert [e["loss"] for e in ranks[0]["log"]] == pytest.approx([e["loss"] for e in log], rel=1e-4)
    _same(ranks[0]["state"], single.state_dict(), atol=1e-4)
    assert (tmp_path / "ckpt" / "last" / "state.json").is_file()
    resumed = torch.load(tmp_path / "resumed-0.pt")  # killed after 7 steps (checkpoint at 6), resumed
    assert resumed["cut_at"] == 6 < len(log)
    _same(resumed["state"], ranks[0]["state"], atol=1e-6)
    assert [(e["step"], e["type"]) for e in resumed["log"]] == [(e["step"], e["type"]) for e in ranks[0]["log"]]


def _fake_launch(monkeypatch, kind: str) -> None:
    import accelerate
    from accelerate.utils import DistributedType

    class FakeAccelerator:
        def __init__(self, **kwargs):
            self.distributed_type = getattr(DistributedType, kind)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)


def test_a_bad_collective_timeout_is_refused(monkeypatch):
    from llmsculpt.errors import SculptError
    from llmsculpt.run.processes import timeout_from_env

    for bad in ("soon", "0"):
        monkeypatch.setenv("SCULPT_DIST_TIMEOUT", bad)
        with pytest.raises(SculptError, match="SCULPT_DIST_TIMEOUT must be"):
            timeout_from_env()


def test_deepspeed_is_refused_with_a_reason(monkeypatch):
    from llmsculpt.errors import SculptError

    _fake_launch(monkeypatch, "DEEPSPEED")
    with pytest.raises(SculptError, match="DEEPSPEED is not supported.*whole model"):
        Processes()


def test_an_accelerate_fsdp_launch_shards_and_lora_says_why_it_does_not(monkeypatch, tmp_path):
    from llmsculpt.errors import SculptError

    _fake_launch(monkeypatch, "FSDP")
    assert Processes().sharded
    model, tok, examples, cfg = accel_case(tmp_path / "data.txt", mode="lora")
    with pytest.raises(SculptError, match="LoRA training is not sharded"):
        run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "ckpt", progress=False)


def _tiny_checkpoint(where: Path) -> Path:
    from llmsculpt.testing.tiny import tiny_model, tiny_tokenizer

    model = tiny_model("tiny-llama")
    model.save_pretrained(where)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(where)
    return where


def test_a_sharded_runs_other_processes_build_only_the_skeleton(tmp_path, monkeypatch):
    """Any process but the main one of a sharded run on a checkpoint directory builds the model on the
    meta device (its shards are filled from the main process's host copy), in the main one's dtype."""
    from llmsculpt.api._common import model_and_tokenizer
    from llmsculpt.config import AccelConfig

    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    cfg = AccelConfig.from_flags(model=str(ckpt), ratio=0.2, dtype="bfloat16")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    other, tok, _ = model_and_tokenizer(None, None, cfg, shard=True, rewrites=True)
    assert all(p.is_meta for p in other.parameters()) and tok is not None
    unsharded, _, _ = model_and_tokenizer(None, None, cfg, shard=False, rewrites=True)  # DDP: weights everywhere
    monkeypatch.setenv("RANK", "0")
    main, _, _ = model_and_tokenizer(None, None, cfg, shard=True, rewrites=True)
    assert not any(p.is_meta for p in main.parameters()) and not any(p.is_meta for p in unsharded.parameters())
    assert {n: (p.shape, p.dtype) for n, p in other.named_parameters()} == \
        {n: (p.shape, p.dtype) for n, p in main.named_parameters()}
    assert {n: b.dtype for n, b in other.named_buffers()} == {n: b.dtype for n, b in main.named_buffers()}


def test_sculpt_accel_fsdp_from_a_directory_equals_one_process(tmp_path):
    """The command line of a sharded accel run from a checkpoint directory (the other process builds only
    the skeleton) gives the one-process model."""
    from llmsculpt.models.loading import load

    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    data = tmp_path / "train.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. pruning removes whole heads. " * 60)
    args = ["accel", "--model", str(ckpt), "--ratio", "0.3", "--phases", "1", "--prune-steps", "1", "--data", str(data),
            "--seq-len", "32", "--batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "llmsculpt.cli.main", *args, "--fsdp", "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    subprocess.run([sys.executable, "-m", "llmsculpt.cli.main", *args, "--out", str(tmp_path / "one")], env=env,
                   check=True, capture_output=True)
    assert (tmp_path / "two" / "plan.json").read_text() == (tmp_path / "one" / "plan.json").read_text()
    _same(load(tmp_path / "two").model.state_dict(), load(tmp_path / "one").model.state_dict(), atol=1e-5)


def test_a_resumed_sharded_runs_other_processes_read_only_the_checkpoints_skeleton(tmp_path):
    """On resume the processes but the main one take the checkpoint's shapes only: their shards and
    moments are filled from the main process's (an empty optimiser state says one is coming)."""
    from llmsculpt.run.checkpoint import load_checkpoint

    model, tok, examples, cfg = accel_case(tmp_path / "data.txt")
    run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "ckpt", progress=False)
    config = asdict(cfg)  # what the run stored (run/accel.py)
    whole, opt, state = load_checkpoint(tmp_path / "ckpt", config, torch.device("cpu"))
    shapes, no_opt, same = load_checkpoint(tmp_path / "ckpt", config, torch.device("cpu"), weights=False)
    assert all(p.is_meta for p in shapes.parameters()) and same == state
    assert {n: (p.shape, p.dtype) for n, p in shapes.named_parameters()} == \
        {n: (p.shape, p.dtype) for n, p in whole.named_parameters()}
    assert (no_opt == {}) == (opt is not None)
