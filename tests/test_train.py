"""Adapt-Accel: schedules, phases, data formats, and an interrupted run that resumes exactly."""

import json

import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.run import Interrupted, run_accel
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
        assert (tmp_path / "cut" / "adapters" / "adapters.safetensors").is_file()
    assert not list((tmp_path / "cut").rglob("*.pt"))  # nothing pickled
    import llmsculpt.run.engine as engine

    calls = []
    monkeypatch.setattr(engine, "train_step", lambda *a, **k: calls.append(1) or train_step(*a, **k))
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


def _alpaca_file(path, prompts):
    path.write_text("\n".join(json.dumps({"instruction": p, "output": "ok ok"}) for p in prompts))
    return path


LONG = "word " * 40  # an instruction of 200+ tokens: beyond --seq-len 64


def _one_error_line(err: str, command: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"sculpt {command}:")]


def test_labels_truncated_away_refuse_or_drop(tmp_path, capsys):
    tok = tiny_tokenizer()
    data = _alpaca_file(tmp_path / "a.jsonl", [LONG + "much longer", LONG, LONG + "longer"])
    with pytest.raises(SculptError, match=r"3 of 3 records have no label tokens left at --seq-len 64") as info:
        load_examples(data, tok, fmt="alpaca", seq_len=64)
    least = int(str(info.value).split("at least ")[1].split()[0])
    examples, _ = load_examples(data, tok, fmt="alpaca", seq_len=least)  # the advice is exact
    assert len(examples) == 1 and [t for t in examples[0].labels if t != IGNORE] != []
    with pytest.raises(SculptError):
        load_examples(data, tok, fmt="alpaca", seq_len=least - 1)
    capsys.readouterr()
    mixed = _alpaca_file(tmp_path / "m.jsonl", [LONG, "Say hi", LONG, "Say ho"])
    examples, _ = load_examples(mixed, tok, fmt="alpaca", seq_len=64)
    err = capsys.readouterr().err.splitlines()
    assert len(examples) == 2 and all(len(e.input_ids) <= 64 for e in examples)
    assert err == [f"warning: {mixed}: 2 of 4 records have no label tokens left at --seq-len 64 "
                   "(the prompt fills it); dropped them, training on the other 2"]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_finetune_cli_refuses_when_every_label_is_truncated(tmp_path, capsys, mode):
    from llmsculpt.cli.main import main

    data = _alpaca_file(tmp_path / "a.jsonl", [LONG + str(i) for i in range(4)])
    out = tmp_path / "ft"
    assert main(["finetune", "--model", "tiny-llama", "--data", str(data), "--seq-len", "32", "--mode", mode,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 of 4 records have no label tokens left at --seq-len 32" in err[0]
    assert "raise --seq-len to at least" in err[0] and not out.exists()


def test_accel_cli_refuses_when_every_label_is_truncated(tmp_path, capsys):
    from llmsculpt.cli.main import main

    data = _alpaca_file(tmp_path / "a.jsonl", [LONG + str(i) for i in range(4)])
    out = tmp_path / "out"
    assert main(["accel", "--model", "tiny-llama", "--ratio", "0.2", "--data", str(data), "--format", "alpaca",
                 "--seq-len", "32", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no label tokens left" in err[0]
    assert not out.exists() and not (tmp_path / "out.ckpt").exists()


def test_finetune_cli_drops_records_without_labels_and_warns(tmp_path, capsys):
    from llmsculpt.cli.main import main

    data = _alpaca_file(tmp_path / "a.jsonl", [LONG, LONG] + [f"Say {i}" for i in range(4)])
    out = tmp_path / "ft"
    assert main(["finetune", "--model", "tiny-llama", "--data", str(data), "--seq-len", "64", "--epochs", "2",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 of 6 records have no label tokens left at --seq-len 64" in err
    log = json.loads((out / "sculpt_report.json").read_text())["finetune"]["log"]
    assert len(log) == 2  # 4 records kept, batch 4, 2 epochs
    assert all(e["loss"] == e["loss"] for e in log)  # finite, not NaN


def test_a_diverging_run_stops_before_saving(tmp_path, capsys):
    from llmsculpt.cli.main import main

    data = _alpaca_file(tmp_path / "a.jsonl", [f"Say {i}" for i in range(8)])
    out = tmp_path / "ft"
    assert main(["finetune", "--model", "tiny-llama", "--data", str(data), "--seq-len", "64", "--mode", "full",
                 "--lr", "1e30", "--out", str(out)]) == 2
    err = _one_error_line(capsys.readouterr().err, "finetune")
    assert len(err) == 1 and "training stopped before saving: the loss became nan" in err[0] and not out.exists()


def test_train_step_refuses_a_batch_without_labels_and_leaves_the_weights():
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.data import Example, collate
    from llmsculpt.train.trainer import make_optimizer

    model = tiny_model("tiny-llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    batch = collate([Example([5, 6, 7, 8], [IGNORE] * 4)], 0)
    with pytest.raises(SculptError, match="the loss became nan"):
        train_step(model, batch, make_optimizer(model, 1e-3), 1e-3)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from llmsculpt.testing import tiny_model
    from llmsculpt.run.checkpoint import _read_tree, _write_tree
    from llmsculpt.train.trainer import make_optimizer

    model = tiny_model("tiny-llama")
    opt = make_optimizer(model, 1e-3, weight_decay=0.1)
    ids = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sd = opt.state_dict()
    _write_tree(sd, tmp_path, "optimizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    back = _read_tree(tmp_path, "optimizer", "cpu")
    assert back["param_groups"] == sd["param_groups"]  # tuples (betas), None, bools: as they were
    assert set(back["state"]) == set(sd["state"]) and all(isinstance(k, int) for k in back["state"])
    for k, entry in sd["state"].items():
        for name, value in entry.items():
            assert torch.equal(back["state"][k][name], value) and back["state"][k][name].dtype == value.dtype
    make_optimizer(model, 1e-3).load_state_dict(back)
