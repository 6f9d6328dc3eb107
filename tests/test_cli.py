"""The stable CLI surface: `sculpt prune`, `sculpt eval --json`, `sculpt inspect`, and bad inputs
(one clear line, exit status 2, no output directory left behind)."""

import json

import pytest
import torch

from llmsculpt.cli.main import main

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes whole heads and channels from a model, "
    "and the model that remains is smaller and faster. "
) * 60


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_eval_inspect_round_trip(tmp_path, calib, capsys):
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--model", "tiny-llama", "--ratio", 0.3, "--calib", calib,
                            "--n-samples", 4, "--seq-len", 32, "--out", out, "--json", "--eval-text", calib)
    assert code == 0, err
    report = json.loads(stdout)
    assert 0.29 < report["achieved_ratio"] < 0.35
    assert report["ppl_after"] > 1 and report["ppl_before"] > 1
    assert (out / "plan.json").exists() and (out / "sculpt_report.json").exists()
    code, stdout, err = run(capsys, "eval", "--model", out, "--text", calib, "--seq-len", 32, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert isinstance(result["ppl"], float) and result["ppl"] > 1
    assert result["params"] == report["params_after"]
    code, stdout, _ = run(capsys, "inspect", out, "--json")
    assert code == 0
    assert json.loads(stdout)["params"] == report["params_after"]


def test_ratio_zero_is_exact_noop(tmp_path, calib, capsys):
    from llmsculpt.models.loading import load
    from llmsculpt.testing import tiny_model

    out = tmp_path / "same"
    code, _, err = run(capsys, "prune", "--model", "tiny-qwen3", "--ratio", 0, "--calib", calib,
                       "--n-samples", 2, "--seq-len", 32, "--out", out, "--no-eval")
    assert code == 0, err
    x = torch.randint(0, 128, (1, 20))
    assert torch.equal(load(out, device="cpu").model(x).logits, tiny_model("tiny-qwen3")(x).logits)


def test_same_seed_same_plan(tmp_path, calib, capsys):
    plans = []
    for name in ("a", "b"):
        code, _, err = run(capsys, "prune", "--model", "tiny-mistral", "--ratio", 0.25, "--calib", calib,
                           "--n-samples", 4, "--seq-len", 32, "--seed", 3, "--out", tmp_path / name, "--no-eval")
        assert code == 0, err
        plans.append(json.loads((tmp_path / name / "plan.json").read_text()))
    assert plans[0] == plans[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ratio", "1.5"], "ratio must be in"),
        (["--ratio", "-0.1"], "ratio must be in"),
        (["--target-params", "10"], "cannot remove"),
        (["--target-params", "10M"], "not smaller than the model"),
        (["--model", "no-such-model"], "unknown model"),
        (["--model", "./missing-dir"], "not found"),
        (["--method", "nope"], "unknown pruning method"),
        (["--calib", "EMPTY"], "empty"),
        (["--calib", "SHORT"], "too short"),
        (["--calib", "MISSING"], "does not exist|not found"),
        (["--seq-len", "100000"], "beyond the model's context"),
    ],
)
def test_bad_prune_inputs(tmp_path, calib, capsys, argv, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("tiny")
    subst = {"EMPTY": tmp_path / "empty.txt", "SHORT": tmp_path / "short.txt", "MISSING": tmp_path / "nope.txt"}
    argv = [str(subst.get(a, a)) for a in argv]
    base = ["prune", "--no-eval", "--model", "tiny-llama", "--calib", calib, "--n-samples", 2, "--seq-len", 32]
    if "--calib" in argv:
        base = base[:4] + base[6:]
    out = tmp_path / "out"
    code, _, err = run(capsys, *base, *argv, "--out", out)
    assert code == 2
    assert err.count("\n") == 1 and "error:" in err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_output_directory_protection(tmp_path, calib, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ["prune", "--no-eval", "--model", "tiny-llama", "--calib", calib, "--n-samples", 2, "--seq-len", 32, "--out", out]
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, *args[:-1], blocker / "sub")
    assert code == 2


def test_eval_rejects_bad_seq_len_and_missing_text(tmp_path, calib, capsys):
    code, _, err = run(capsys, "eval", "--model", "tiny-llama", "--text", calib, "--seq-len", 100000, "--json")
    assert code == 2 and "seq" in err.lower()
    code, _, err = run(capsys, "eval", "--model", "tiny-llama", "--text", tmp_path / "nope.txt")
    assert code == 2 and "does not exist" in err


def test_cli_returns_large_blocks_unless_the_user_chose(monkeypatch):
    from llmsculpt.process_memory import return_large_blocks_to_the_system

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert return_large_blocks_to_the_system() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    import sys

    assert return_large_blocks_to_the_system() is sys.platform.startswith("linux")


def test_a_launched_process_returns_smaller_blocks(monkeypatch):
    from llmsculpt.process_memory import mmap_threshold

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert mmap_threshold() == 8 << 20
    monkeypatch.setenv("WORLD_SIZE", "2")  # shards are 1/N of each tensor: below 8 MiB
    assert mmap_threshold() == 1 << 20
