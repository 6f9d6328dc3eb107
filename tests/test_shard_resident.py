"""The shard-resident prune (run/shards.py, api/_sharded.py): launched on several CPU processes
(torchrun, gloo), no process ever holds the whole model, and the result is the single process's."""

import json
import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import llmsculpt
from llmsculpt.api._sharded import check_sharded, checkpoint_directory
from llmsculpt.config import PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load
from llmsculpt.plan import Update
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing.tiny import tiny_model, tiny_tokenizer

from _plans import mixed_plan
from conftest import FAMILIES

SCRIPTS = Path(__file__).parent / "scripts"
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def _launch(n: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _checkpoint(family: str, where: Path) -> Path:
    model = tiny_model(family)
    model.save_pretrained(where)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(where)
    return where


def _single(directory: Path, out: Path, **fields):
    return llmsculpt.prune(str(directory), method="adaptive", ratio=0.3, n_samples=6, seq_len=32, out=out,
                           eval_text=TEXT, eval_windows=8, **fields)


def _same_model(a: Path, b: Path) -> None:
    assert json.loads((a / "plan.json").read_text()) == json.loads((b / "plan.json").read_text())
    sa, sb = load(a).model.state_dict(), load(b).model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One three-process run (uneven shards: e.g. 51 of 64 hidden channels kept, 43/43/42 MLP rows):
    the shard checks on every family, then the guarded launched prune of a tiny-qwen2 checkpoint."""
    out = tmp_path_factory.mktemp("launched")
    ckpt = _checkpoint("tiny-qwen2", out / "ckpt")
    _launch(3, str(SCRIPTS / "shard_resident.py"), str(out), ",".join(FAMILIES), str(ckpt))
    return out


def test_shards_load_gather_and_apply_a_plan_exactly_on_every_family(launched):
    """Every tensor read as shards and gathered back equals the checkpoint's; a plan with a dropped
    layer, a K/V group, half an MLP, hidden channels and a bias update applied shard by shard equals
    surgery on the whole model, and so do the perplexities through the sharded forward."""
    results = torch.load(launched / "shards.pt")
    for family in FAMILIES:
        got = results[family]
        model = AutoModelForCausalLM.from_pretrained(launched / family, dtype=torch.float32)
        for name, tensor in model.state_dict().items():
            if name in got["loaded"]:
                assert torch.equal(got["loaded"][name], tensor), (family, name)
            else:  # a tied lm_head is the embedding, listed once
                assert model.config.tie_word_embeddings and name == "lm_head.weight"
        plan = mixed_plan(architecture(model))
        plan.updates = [Update(layer=0, module="down_proj", param="bias", op="add",
                               value=torch.linspace(-1, 1, len(plan.hidden)))]
        pruned = apply_plan(deepcopy(model), plan)
        assert got["arch"] == architecture(pruned).to_dict()
        state = pruned.state_dict()
        assert set(got["pruned"]) | ({"lm_head.weight"} if model.config.tie_word_embeddings else set()) == set(state)
        for name, tensor in got["pruned"].items():
            assert torch.equal(tensor, state[name]), (family, name)
        tok = tiny_tokenizer()
        text = "the quick brown fox jumps over the lazy dog " * 30
        assert got["ppl"] == pytest.approx(perplexity(model, tok, text, seq_len=16, max_windows=6).ppl, rel=1e-5)
        assert got["ppl_after"] == pytest.approx(perplexity(pruned, tok, text, seq_len=16, max_windows=6).ppl, rel=1e-5)


def test_a_launched_prune_assembles_nothing_whole_and_equals_one_process(launched, tmp_path):
    """No whole gradient, no host copy (the script makes either raise), plain models meta throughout;
    the same plan, weights and perplexities as one process."""
    single = _single(launched / "ckpt", tmp_path / "single", hidden=0.25)  # the embedding's scores sharded too
    _same_model(launched / "pruned", tmp_path / "single")
    reported = json.loads((launched / "pruned.json").read_text())
    assert reported["processes"] == 3
    assert reported["params_after"] == single.report["params_after"]
    assert reported["ppl_before"] == pytest.approx(single.report["ppl_before"], rel=1e-5)
    assert reported["ppl_after"] == pytest.approx(single.report["ppl_after"], rel=1e-5)
    n_layers = AutoModelForCausalLM.from_pretrained(launched / "ckpt").config.num_hidden_layers
    assert reported["reductions"] > 0 and reported["layers_held"] == 1 < n_layers  # each layer reduced as it came


def test_sculpt_prune_launches_with_the_command_line_of_one_process(tmp_path):
    ckpt = _checkpoint("tiny-llama", tmp_path / "ckpt")
    proc = _launch(2, "-m", "llmsculpt.cli.main", "prune", "--model", str(ckpt), "--method", "adaptive", "--ratio", "0.3",
                   "--n-samples", "6", "--seq-len", "32", "--eval-windows", "8", "--out", str(tmp_path / "launched"),
                   "--no-plots")
    assert proc.stdout.count("saved to") == 1  # the main process reports, the other stays quiet
    assert "held-out perplexity" in proc.stdout
    _single(ckpt, tmp_path / "one")  # the same recipe in one process
    _same_model(tmp_path / "launched", tmp_path / "one")
    assert json.loads((tmp_path / "launched" / "sculpt_report.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_the_default_model_gguf_launched_on_two_processes_gives_the_one_process_plan(tmp_path):
    """The default model is a GGUF file: the launched prune reads its converted copy (written once by the
    main process). In fp32 the plan equals one process's; in bf16 the processes' gradients are summed
    after rounding, so near-ties may fall the other way (measured: 1 % of the kept channels)."""
    args = ["prune", "--model", "smollm2-135m", "--method", "adaptive", "--ratio", "0.2", "--dtype", "float32",
            "--option", "steps=1", "--n-samples", "4", "--no-eval", "--no-plots"]
    _launch(2, "-m", "llmsculpt.cli.main", *args, "--out", str(tmp_path / "launched"))
    subprocess.run([sys.executable, "-m", "llmsculpt.cli.main", *args, "--out", str(tmp_path / "one")], check=True,
                   capture_output=True)
    plan = lambda d: {k: v for k, v in json.loads((d / "plan.json").read_text()).items() if k != "meta"}  # noqa: E731
    assert plan(tmp_path / "launched") == plan(tmp_path / "one")


@pytest.mark.parametrize("fields, why", [
    ({"method": "flap"}, "flap cannot run on several processes"),
    ({"method": "adaptive", "metric": "l2"}, "metric l2 cannot be scored from the shards"),
    ({"method": "adaptive", "layer_by_layer": True}, "--layer-by-layer runs in one process"),
])
def test_what_shards_cannot_do_is_refused_before_loading(fields, why):
    with pytest.raises(SculptError, match=why):
        check_sharded(PruneConfig(ratio=0.2, **fields))


def test_a_launched_prune_needs_a_safetensors_directory(tmp_path):
    tiny_model("tiny-llama").config.save_pretrained(tmp_path / "config-only")  # a shape, no weights
    for name in ("tiny-llama", str(tmp_path / "config-only")):
        with pytest.raises(SculptError, match="safetensors checkpoint directory or a GGUF file"):
            checkpoint_directory(name)
    assert checkpoint_directory(_checkpoint("tiny-llama", tmp_path / "ok")) == tmp_path / "ok"
    assert checkpoint_directory("smollm2-135m") is None  # a GGUF: read through its converted copy


def test_a_launched_prune_of_a_model_object_or_a_dry_run_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SculptError, match="loads its checkpoint directory itself"):
        llmsculpt.prune(tiny_model("tiny-llama"), tokenizer=tiny_tokenizer(), ratio=0.2)
    with pytest.raises(SculptError, match="cannot dry-run"):
        llmsculpt.prune("tiny-llama", ratio=0.2, dry_run=True)


def test_a_launched_prunes_budget_and_estimate_are_per_process(tmp_path):
    from llmsculpt.api._budget import fit_or_refuse
    from llmsculpt.eval.memory_estimate import estimate
    from llmsculpt.measure.sharded import micro_batch_for

    ckpt = _checkpoint("tiny-llama", tmp_path / "ckpt")
    kw = dict(method="adaptive", dtype="auto", n_samples=10, seq_len=32, device="cpu", command="this prune")
    with pytest.raises(SculptError, match="this prune"):
        fit_or_refuse(str(ckpt), budget="1MB", devices=2, **kw)
    assert fit_or_refuse(str(ckpt), budget="64GB", devices=2, **kw) == micro_batch_for(10, 32, 2) == 5
    peaks = [estimate(str(ckpt), method="adaptive", devices=d).breakdown for d in (1, 2, 4)]
    assert "gathered" not in peaks[0] and peaks[1]["gathered"] == peaks[2]["gathered"] > 0  # FSDP2's whole units
    arch = architecture(tiny_model("tiny-llama"))
    item = peaks[0]["weights"] // arch.param_count()
    root = (2 * arch.vocab * arch.hidden + arch.hidden) * item  # replicated: the untied embedding and lm_head, final norm
    assert peaks[0]["weights"] - root == 2 * (peaks[1]["weights"] - root) == 4 * (peaks[2]["weights"] - root)
