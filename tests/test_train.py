"""Adapt-Accel: schedules, phases, data formats, and an interrupted run that resumes exactly."""

import json

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.methods.adapt_accel import Interrupted, run_accel
from llmsculpt.train.trainer import train_step
from llmsculpt.structures.shapes import count_params
from llmsculpt.testing import tiny_tokenizer
from llmsculpt.train.data import IGNORE, load_examples
from llmsculpt.train.phases import data_shares, phase_targets
from llmsculpt.train.schedule import cosine, wsd

from _runs import TEXT, accel_case



def test_wsd_boundaries():
    total = 100
    lrs = [wsd(s, total, lr=1.0, min_lr=0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(0.2)  # warm-up: 5 steps
    assert lrs[4] == pytest.approx(1.0) and lrs[50] == 1.0 and lrs[89] == 1.0
    assert lrs[-1] == pytest.approx(0.1)  # decayed to min_lr over the last 10 steps
    assert all(a >= b for a, b in zip(lrs[89:], lrs[90:]))
    assert cosine(99, 100, lr=1.0, min_lr=0.1) == pytest.approx(0.1)


def test_phase_targets_and_linear_shares():
    targets = phase_targets(1000, 500, 4)
    assert targets[-1] == 500 and all(a > b for a, b in zip([1000] + targets, targets))
    ratios = [b / a for a, b in zip([1000] + targets[:-1], targets)]
    assert max(ratios) - min(ratios) < 0.01  # the same keep ratio every phase
    shares = data_shares(100, 4, "linear")
    assert sum(shares) == 100 and shares == sorted(shares) and shares[0] == 10
    assert sum(data_shares(101, 3, "constant")) == 101


def test_data_formats_mask_prompts(tmp_path):
    tok = tiny_tokenizer()
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Say hi", "input": "", "output": "hi"}) + "\n")
    (ex,), bad = load_examples(alpaca, tok, fmt="alpaca", seq_len=256)
    answer = [t for t in ex.labels if t != IGNORE]
    assert bad == 0 and ex.labels[0] == IGNORE and answer == ex.input_ids[-len(answer):] and len(answer) == 3
    bad_file = tmp_path / "b.jsonl"
    bad_file.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n{oops\n")
    with pytest.raises(SculptError, match="b.jsonl:2"):
        load_examples(bad_file, tok, fmt="alpaca")
    examples, bad = load_examples(bad_file, tok, fmt="alpaca", skip_bad=True)
    assert len(examples) == 1 and bad == 1
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    blocks, _ = load_examples(text, tok, fmt="text", seq_len=64)
    assert all(len(b.input_ids) == 64 and b.labels == b.input_ids for b in blocks)


def _run(tmp_path, name, **kw):
    model, tok, examples, cfg = accel_case(tmp_path / "t.txt")
    return run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / name, progress=False, **kw)


def test_two_phase_run_reaches_target_and_logs(tmp_path):
    model, plan, log = _run(tmp_path, "a")
    assert count_params(model) <= 100_000
    assert [e["step"] for e in log] == list(range(len(log)))
    assert log[-1]["params"] == count_params(model)
    assert {e["phase"] for e in log} == {0, 1}
    assert (tmp_path / "a" / "last" / "state.json").is_file()
    assert len([line for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if line]) == len(log)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, mode, monkeypatch):
    def _run(tmp_path, name, **kw):
        model, tok, examples, cfg = accel_case(tmp_path / "t.txt", mode=mode)
        return run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / name, progress=False, **kw)

    full, _, full_log = _run(tmp_path, "full")
    with pytest.raises(Interrupted):
        _run(tmp_path, "cut", stop_after=len(full_log) - 2)  # dies mid-phase, after a checkpoint
    if mode == "lora":  # the adapters of the phase in progress were checkpointed on top of its base
        assert (tmp_path / "cut" / "adapters" / "adapters.pt").is_file()
    import llmsculpt.methods.adapt_accel as accel

    calls = []
    monkeypatch.setattr(accel, "train_step", lambda *a, **k: calls.append(1) or train_step(*a, **k))
    resumed, _, log = _run(tmp_path, "cut", resume=True)
    # checkpoints every 3 steps; killed 2 steps before the end, just before the checkpoint it would write
    last_checkpoint = (len(full_log) - 3) // 3 * 3
    assert len(calls) == len(full_log) - last_checkpoint  # continued from there, not from the phase start
    assert [e["step"] for e in log] == [e["step"] for e in full_log]
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SculptError, match="nothing to resume"):
        _run(tmp_path, "none", resume=True)


def test_accel_cli_bad_inputs_and_end_to_end(tmp_path, capsys):
    from llmsculpt.cli.main import main

    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    assert main(["accel", "--model", "tiny-llama", "--target-params", "10", "--data", str(data), "--out", str(out)]) == 2
    assert "below the smallest model" in capsys.readouterr().err and not out.exists()
    assert main(["accel", "--model", "tiny-llama", "--ratio", "0.2", "--data", str(tmp_path / "no.txt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    code = main(["accel", "--model", "tiny-llama", "--ratio", "0.2", "--data", str(data), "--seq-len", "32",
                 "--phases", "2", "--prune-steps", "1", "--fsdp", "--out", str(out)])
    assert code == 0
    assert "--fsdp has no effect in a single process" in capsys.readouterr().err
    report = json.loads((out / "sculpt_report.json").read_text())
    assert report["params_after"] <= 0.8 * report["params_before"] + 1
    assert (out / "training.png").exists() and (tmp_path / "out.ckpt" / "log.jsonl").exists()


def test_finetune_lora_cli_lowers_loss_and_keeps_shape(tmp_path, capsys):
    from llmsculpt.cli.main import main
    from llmsculpt.models.loading import load

    data = tmp_path / "a.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Repeat {i % 3}", "output": "ok ok ok"}) for i in range(12)))
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", "tiny-llama", "--ratio", "0.2", "--calib", str(data), "--n-samples", "2",
                 "--seq-len", "16", "--no-eval", "--out", str(pruned)]) == 0
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(pruned), "--data", str(data), "--epochs", "4", "--lr", "5e-3",
                 "--out", str(out)]) == 0
    report = json.loads((out / "sculpt_report.json").read_text())
    log = report["finetune"]["log"]
    assert log[-1]["loss"] < log[0]["loss"]
    before, after = load(pruned, device="cpu").model, load(out, device="cpu").model
    assert count_params(after) == count_params(before)  # LoRA merged away
    assert not any("lora" in n for n, _ in after.named_parameters())


def test_adam_moments_follow_the_pruned_indices():
    from llmsculpt.plan import Plan
    from llmsculpt.structures.shapes import architecture
    from llmsculpt.surgery import apply_plan
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.optim_carry import MomentShadows
    from llmsculpt.train.trainer import make_optimizer

    model = tiny_model("tiny-llama")
    opt = make_optimizer(model, 1e-3)
    ids = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}
    plan = Plan.keep_all(architecture(model))
    plan.layers[0].mlp = list(range(10, 96))
    plan.layers[1].heads, plan.layers[1].kv_heads = [2, 3], [1]
    plan.layers[2].drop = True
    shadows = MomentShadows(model, opt)
    apply_plan(model, plan)
    new = make_optimizer(model, 1e-3)
    assert shadows.carry(plan, model, new) == len(list(model.parameters()))
    state = {n: new.state[p] for n, p in model.named_parameters()}
    down = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(state[down]["exp_avg"], before[down]["exp_avg"][:, 10:96])
    assert torch.equal(state[down]["exp_avg_sq"], before[down]["exp_avg_sq"][:, 10:96])
    q = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(state[q]["exp_avg"], before[q]["exp_avg"][32:64])  # heads 2, 3 of head_dim 16
    # layer 3 became layer 2 and kept its moments; every step count survived
    assert torch.equal(state["model.layers.2.mlp.up_proj.weight"]["exp_avg"], before["model.layers.3.mlp.up_proj.weight"]["exp_avg"])
    assert all(int(s["step"]) == 2 for s in state.values())
    opt_loss = model(input_ids=ids, labels=ids).loss
    opt_loss.backward()
    new.step()  # the carried state is usable


def test_accel_with_carried_moments_reaches_the_target(tmp_path):
    model, tok, examples, cfg = accel_case(tmp_path / "t.txt", optimizer_state="carry")
    model, _, log = run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "c", progress=False)
    assert count_params(model) <= 100_000 and {e["phase"] for e in log} == {0, 1}
    with pytest.raises(SculptError, match="optimizer_state"):
        accel_case(tmp_path / "t.txt", optimizer_state="keep")
