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

from _files import stored_dtypes, weight_dtypes
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


# ---- mixed precision (bf16/fp16 weights, fp32 master weights and moments) ------------------------

def _bf16(case):
    model, *rest = case
    return (model.to(torch.bfloat16), *rest)


def test_mixed_adamw_keeps_fp32_masters_and_small_updates():
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.mixed import MixedAdamW
    from llmsculpt.train.trainer import make_optimizer

    model = tiny_model("tiny-llama").to(torch.bfloat16)
    opt = make_optimizer(model, 1e-5)
    assert isinstance(opt, MixedAdamW) and opt.loss_scale == 1.0
    ids = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    w = model.model.layers[0].mlp.up_proj.weight
    start = w.detach().float().clone()
    for _ in range(3):
        train_step(model, batch, opt, 1e-5)
    master = opt.master_of(w)
    assert master.dtype == torch.float32 and w.dtype == torch.bfloat16
    assert torch.equal(master.to(torch.bfloat16), w.detach())  # the weights are the rounded masters
    assert not torch.equal(master, start)  # updates of 1e-5 move the master, below bf16's resolution
    sd = opt.state_dict()
    assert {v.dtype for s in sd["state"].values() for k, v in s.items() if k != "step"} == {torch.float32}
    assert all(p.grad is None for p in model.parameters())  # bf16 gradients freed by the step
    fp16 = tiny_model("tiny-llama").to(torch.float16)
    opt16 = make_optimizer(fp16, 1e-3)
    assert opt16.loss_scale == 2.0**16 and train_step(fp16, batch, opt16, 1e-3) == pytest.approx(
        train_step(tiny_model("tiny-llama"), batch, make_optimizer(tiny_model("tiny-llama"), 1e-3), 1e-3), rel=1e-2)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_bf16_accel_trains_resumes_exactly_and_saves_bf16(tmp_path, mode):
    def go(name, **kw):
        model, tok, examples, cfg = _bf16(accel_case(tmp_path / "t.txt", mode=mode))
        return run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / name, progress=False, **kw)

    full, _, full_log = go("full")
    assert {p.dtype for p in full.parameters()} == {torch.bfloat16}
    assert count_params(full) <= 100_000
    losses = [e["loss"] for e in full_log if e["phase"] == 1]
    assert losses[-1] < losses[0]  # the loss goes down within a phase
    assert weight_dtypes(tmp_path / "full" / "last") == {"BF16"}
    with pytest.raises(Interrupted):
        go("cut", stop_after=len(full_log) - 2)
    if mode == "full":
        assert "F32" in stored_dtypes(tmp_path / "cut" / "last" / "optimizer.safetensors")  # fp32 masters
    resumed, _, log = go("cut", resume=True)
    assert [e["loss"] for e in log] == [e["loss"] for e in full_log]
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), n


def test_bf16_carry_slices_the_master_weights(tmp_path):
    from llmsculpt.plan import Plan
    from llmsculpt.structures.shapes import architecture
    from llmsculpt.surgery import apply_plan
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.optim_carry import MomentShadows
    from llmsculpt.train.trainer import make_optimizer

    model = tiny_model("tiny-llama").to(torch.bfloat16)
    opt = make_optimizer(model, 1e-4)
    ids = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    for _ in range(2):
        train_step(model, batch, opt, 1e-4)
    down = model.model.layers[0].mlp.down_proj.weight
    before = opt.master_of(down).clone()
    plan = Plan.keep_all(architecture(model))
    plan.layers[0].mlp = list(range(10, 96))
    shadows = MomentShadows(model, opt)
    apply_plan(model, plan)
    new = make_optimizer(model, 1e-4)
    assert shadows.carry(plan, model, new) == len(list(model.parameters()))
    carried = new.master_of(model.model.layers[0].mlp.down_proj.weight)
    assert torch.equal(carried, before[:, 10:96])  # the fp32 master, not the bf16 weight, carried
    train_step(model, batch, new, 1e-4)  # and usable


def test_bf16_carried_accel_run_resumes_exactly(tmp_path):
    def go(name, **kw):
        model, tok, examples, cfg = _bf16(accel_case(tmp_path / "t.txt", optimizer_state="carry"))
        return run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / name, progress=False, **kw)

    full, _, full_log = go("full")
    with pytest.raises(Interrupted):
        go("cut", stop_after=4)
    resumed, _, log = go("cut", resume=True)
    assert [e["loss"] for e in log] == [e["loss"] for e in full_log]
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


def test_bf16_pretrain_prune_trains_resumes_exactly_and_saves_bf16(tmp_path):
    from llmsculpt.run import pretrain_prune

    from _runs import pretrain_case

    (tmp_path / "t.txt").write_text(TEXT)
    text, _ = load_examples(tmp_path / "t.txt", tiny_tokenizer(), fmt="text", seq_len=32)

    def go(name, dtype=torch.bfloat16, **kw):
        model, tok, _, cfg = pretrain_case(lr=3e-3, continue_steps=6)
        return pretrain_prune(model.to(dtype), tok, text, cfg, checkpoint_dir=tmp_path / name, checkpoint_every=2,
                              progress=False, **kw)

    full, _, full_log = go("full")
    assert {p.dtype for p in full.parameters()} == {torch.bfloat16} and count_params(full) <= 105_000
    assert weight_dtypes(tmp_path / "full" / "last") == {"BF16"}
    train = [e["loss"] for e in full_log if e["type"] == "train"]
    assert train[-1] < train[0] - 1.0  # learns the repeated text
    _, _, fp32_log = go("fp32", torch.float32)  # and follows the fp32 run (bf16 forward: ~1 % here)
    assert [e["type"] for e in fp32_log] == [e["type"] for e in full_log]
    assert [e["loss"] for e in full_log] == pytest.approx([e["loss"] for e in fp32_log], rel=0.08)
    with pytest.raises(Interrupted):
        go("cut", stop_after=len(full_log) - 3)
    resumed, _, log = go("cut", resume=True)
    assert [e["loss"] for e in log] == [e["loss"] for e in full_log]
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


@pytest.mark.parametrize("lora", [True, False])
def test_bf16_finetune_lowers_the_loss_and_saves_bf16(tmp_path, lora):
    from llmsculpt.io.save import write_model_files
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.finetune import finetune

    from _runs import token_blocks

    model = tiny_model("tiny-llama").to(torch.bfloat16)
    trained, log = finetune(model, tiny_tokenizer(), token_blocks(8), epochs=4, batch_size=4, lr=5e-3, lora=lora,
                            gradient_checkpointing=True, progress=False)
    assert log[-1]["loss"] < log[0]["loss"]
    assert {p.dtype for p in trained.parameters()} == {torch.bfloat16}
    assert not trained.is_activation_checkpointing and not any("lora" in n for n, _ in trained.named_parameters())
    write_model_files(trained, tiny_tokenizer(), tmp_path)
    assert weight_dtypes(tmp_path) == {"BF16"}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_accumulated_micro_batches_equal_one_batch(checkpointing):
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.data import Example
    from llmsculpt.train.finetune import finetune

    g = torch.Generator().manual_seed(3)  # uneven lengths and label counts: the token weighting matters
    examples = [Example(t.tolist(), [IGNORE] * (i % 3) + t.tolist()[i % 3:])
                for i, t in enumerate(torch.randint(4, 128, (8, 24), generator=g))]
    examples += [Example(e.input_ids[:12], e.labels[:12]) for e in examples[:4]]
    runs = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model, log = finetune(tiny_model("tiny-llama"), tiny_tokenizer(), examples, epochs=2, batch_size=batch_size,
                              grad_accum=accum, lora=False, lr=1e-3, progress=False,
                              gradient_checkpointing=checkpointing and accum > 1)
        runs.append((model, log))
    (a, log_a), (b, log_b) = runs
    assert len(log_a) == len(log_b) == 6
    assert [e["loss"] for e in log_a] == pytest.approx([e["loss"] for e in log_b], rel=1e-5)
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=2e-5), n


def test_process_device_from_the_launchers_environment(monkeypatch):
    from llmsculpt.run.processes import Processes, process_device

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert process_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    if not torch.cuda.is_available():
        assert process_device() == torch.device("cpu")
        with pytest.raises(SculptError, match="CUDA is not available"):
            process_device("cuda")
    assert process_device(shard=True) == torch.device("cpu")  # the FSDP main process's host copy
    with pytest.raises(SculptError, match="each on its own GPU"):
        process_device("cuda:0")
    monkeypatch.delenv("WORLD_SIZE")
    from llmsculpt.testing import tiny_model

    model = tiny_model("tiny-llama")
    assert Processes().place(model) is model  # already where it belongs: not moved


def test_gradient_checkpointing_keeps_fewer_activations():
    from llmsculpt.testing import tiny_model
    from llmsculpt.train.finetune import _checkpointing

    ids = torch.randint(4, 128, (4, 64), generator=torch.Generator().manual_seed(0))
    saved = {}
    for on in (False, True):
        model = tiny_model("tiny-llama").train()
        if on:
            _checkpointing(model, True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.nbytes) or t, lambda t: t):
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        saved[on] = sum(sizes)
        if on:
            _checkpointing(model, False)
            assert not model.is_activation_checkpointing
    assert saved[True] < saved[False] / 4  # only each layer's input is kept; the rest is recomputed


def test_mixed_adamw_steps_the_master_like_torchs_adamw(monkeypatch):
    import llmsculpt.train.mixed as mixed

    monkeypatch.setattr(mixed, "CHUNK", 7)  # several row chunks per matrix
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5, generator=g).to(torch.bfloat16))
    b = torch.nn.Parameter(torch.randn(5, generator=g).to(torch.bfloat16))
    ref = [torch.nn.Parameter(t.detach().float()) for t in (w, b)]
    opt = mixed.MixedAdamW([w, b], lr=1e-2, weight_decay=0.1)
    torch_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        for p, r in zip((w, b), ref):
            p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
            r.grad = p.grad.float()
        opt.clip_grad_norm_(1e9)
        opt.step()
        torch_opt.step()
    for p, r in zip((w, b), ref):
        assert torch.allclose(opt.master_of(p), r, rtol=1e-6, atol=1e-7)
        assert torch.equal(p.detach(), r.detach().to(torch.bfloat16))
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], torch_opt.state_dict()["state"][0]["exp_avg"])
