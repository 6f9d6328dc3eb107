"""Typed recipes: every shipped example parses (method options included), unknown keys are refused by
name before anything is written, flags override a file, and a saved ``recipe.yaml`` replays its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _runs import TEXT, cli

from llmsculpt.config import (AccelConfig, EvalConfig, ExportConfig, FinetuneConfig, PretrainPruneConfig, PruneConfig,
                              SearchConfig)
from llmsculpt.errors import SculptError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLASSES = {"prune": PruneConfig, "accel": AccelConfig, "search": SearchConfig, "finetune": FinetuneConfig,
           "pretrain-prune": PretrainPruneConfig, "eval": EvalConfig, "export": ExportConfig}


def _class_of(path: Path):
    name = path.stem
    return CLASSES.get(name) or CLASSES[name.split("-")[0]]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses_and_round_trips(path):
    cfg = _class_of(path).from_yaml(path)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    if isinstance(cfg, PruneConfig):
        cfg.check_options()  # the method exists and its options are known


def test_there_is_an_example_per_command():
    assert {_class_of(p) for p in EXAMPLES.glob("*.yaml")} == set(CLASSES.values())
    methods = {PruneConfig.from_yaml(p).method for p in EXAMPLES.glob("prune*.yaml")}
    assert methods >= {"adaptive", "uniform", "flap"}


def test_gguf_dtypes_match_the_exporter():
    from llmsculpt.config.tools import GGUF_DTYPES
    from llmsculpt.io.export_gguf import DTYPES

    assert tuple(GGUF_DTYPES) == tuple(DTYPES)


# ---- unknown keys -------------------------------------------------------------------------------

def test_unknown_keys_are_named_with_the_known_ones():
    with pytest.raises(SculptError, match=r"unknown key 'foo' in accel recipe; known: target_params, ratio"):
        AccelConfig.from_dict({"target_params": 10, "foo": 1})
    with pytest.raises(SculptError, match=r"unknown key 'data.foo' in prune recipe; known \(under data\): calib"):
        PruneConfig.from_dict({"data": {"foo": 1}})
    with pytest.raises(SculptError, match=r"unknown key 'ratio' in pretrain-prune recipe"):
        PretrainPruneConfig.from_dict({"target_params": 10, "ratio": "2:1"})  # renamed: cycle
    with pytest.raises(SculptError, match="unknown adaptive options: bogus; known: amplitude"):
        PruneConfig(options={"bogus": 1}).check_options()


BAD = {  # command, the rest of its command line; {out} is the output that must not appear
    "prune": "prune --model tiny-llama --calib {text} --n-samples 2 --seq-len 16 --no-eval --out {out}",
    "accel": "accel --model tiny-llama --data {text} --ratio 0.1 --phases 1 --seq-len 16 --out {out}",
    "search": "search --model tiny-llama --ratio 0.1 --trials 1 --n-samples 2 --pool-size 2 --seq-len 16 --study {out}",
    "pretrain-prune": "pretrain-prune --model tiny-llama --data {text} --target-params 120K --seq-len 16 --out {out}",
    "finetune": "finetune --model tiny-llama --data {text} --format text --seq-len 16 --out {out}",
    "export": "export --model tiny-llama --out {out}",
    "eval": "eval --model tiny-llama --text {text}",
}


UNKNOWN = [(command, "bogus: 1\n", "bogus") for command in BAD] + [
    ("prune", "data:\n  foo: 1\n", "data.foo"),  # nested: named with its path
    ("prune", "options:\n  foo: 1\n", "foo"),  # the method's options, checked before loading
]


@pytest.mark.parametrize("command,body,key", UNKNOWN, ids=[f"{c}-{k}" for c, _, k in UNKNOWN])
def test_unknown_key_exits_2_and_writes_nothing(tmp_path, command, body, key):
    (tmp_path / "t.txt").write_text(TEXT)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(body)
    out = tmp_path / "out"
    argv = BAD[command].format(text=tmp_path / "t.txt", out=out).split() + ["--config", str(recipe)]
    rc, _, err = cli(*argv)
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"'{key}'" in err or f" {key};" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "t.txt"]  # no out, no .ckpt, no temp dirs


def test_plain_types_are_checked_and_yaml_exponents_read_as_floats(tmp_path):
    with pytest.raises(SculptError, match="data.n_samples in prune recipe must be an int, got 'abc'"):
        PruneConfig.from_dict({"data": {"n_samples": "abc"}})
    with pytest.raises(SculptError, match="attention in prune recipe must be a bool"):
        PruneConfig.from_dict({"attention": "no"})
    path = tmp_path / "a.yaml"
    path.write_text("target_params: 90M\nlr: 2e-5\n")  # YAML 1.1 reads 2e-5 as a string
    assert AccelConfig.from_yaml(path).lr == 2e-5


# ---- flags over files -----------------------------------------------------------------------------

def test_flags_override_the_file_and_none_keeps_it(tmp_path):
    path = tmp_path / "r.yaml"
    PruneConfig(method="uniform", target_params="100K", seed=3, data={"n_samples": 4}).to_yaml(path)
    cfg = PruneConfig.from_yaml(path)
    same = cfg.with_overrides(seed=None, method=None, n_samples=None)
    assert same == cfg
    other = cfg.with_overrides(ratio=0.3, seq_len=64)
    assert (other.ratio, other.target_params, other.data.seq_len, other.data.n_samples) == (0.3, None, 64, 4)
    assert cfg.with_overrides(target_params="90K").target_params == 90_000
    with pytest.raises(SculptError, match="unknown option 'nosuch'"):
        cfg.with_overrides(nosuch=1)


def test_cycle_and_ratio_mean_one_thing():
    cfg = PretrainPruneConfig(target_params="60M", cycle="4:1")
    assert (cfg.prune_every, cfg.train_every) == (4, 1)
    with pytest.raises(SculptError, match="cycle must look like 4:1"):
        PretrainPruneConfig(target_params="60M", cycle="x")
    acc = AccelConfig(ratio=0.25).resolved(1000)
    assert (acc.target_params, acc.ratio) == (750, None)
    with pytest.raises(SculptError, match=r"ratio must be in \[0, 1\)"):
        AccelConfig(ratio=1.5)


# ---- dry run and the caller's model ----------------------------------------------------------------

def test_dry_run_plans_without_surgery_or_writing(tmp_path):
    import llmsculpt
    from llmsculpt.testing import tiny_model, tiny_tokenizer

    model = tiny_model("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("uniform", "adaptive"):
        kw = dict(tokenizer=tiny_tokenizer(), method=method, ratio=0.3, calib_text=TEXT, n_samples=2, seq_len=16)
        r = llmsculpt.prune(model, dry_run=True, out=tmp_path / "never", **kw)
        assert r.report["dry_run"] and r.report["params_after"] == r.architecture.param_count()
        assert r.report["params_after"] < r.report["params_before"]
        real = llmsculpt.prune(model, **kw)  # the same plan, applied to a copy
        assert real.plan.to_dict() == r.plan.to_dict() and real.report["params_after"] == r.report["params_after"]
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not (tmp_path / "never").exists()
    rc, stdout, err = cli("prune", "--model", "tiny-llama", "--ratio", "0.3", "--n-samples", "2", "--seq-len", "16",
                          "--dry-run", "--out", tmp_path / "out")
    assert rc == 0, err
    assert "dry run: nothing written" in stdout and not list(tmp_path.iterdir())


def test_a_callers_model_is_pruned_in_place_only_when_asked():
    import llmsculpt
    from llmsculpt.structures.shapes import count_params
    from llmsculpt.testing import tiny_model, tiny_tokenizer

    model = tiny_model("tiny-llama")
    n = count_params(model)
    r = llmsculpt.prune(model, tokenizer=tiny_tokenizer(), method="uniform", ratio=0.3, calib_text=TEXT,
                        n_samples=2, seq_len=16)
    assert count_params(model) == n and count_params(r.model) < n
    r = llmsculpt.prune(model, tokenizer=tiny_tokenizer(), method="uniform", ratio=0.3, calib_text=TEXT,
                        n_samples=2, seq_len=16, inplace=True)
    assert r.model is model and count_params(model) < n


# ---- replay -----------------------------------------------------------------------------------------

def _arch(out: Path) -> dict:
    return json.loads((out / "sculpt_report.json").read_text())["architecture"]


def test_a_saved_prune_recipe_replays_the_same_plan(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    first, again = tmp_path / "a", tmp_path / "b"
    rc, _, err = cli("prune", "--model", "tiny-qwen2", "--method", "adaptive", "--ratio", "0.25", "--calib",
                     tmp_path / "t.txt", "--n-samples", "2", "--seq-len", "16", "--seed", "3", "--option", "steps=2",
                     "--no-eval", "--out", first)
    assert rc == 0, err
    recipe = PruneConfig.from_yaml(first / "recipe.yaml")
    assert (recipe.model, recipe.seed, recipe.options) == ("tiny-qwen2", 3, {"steps": 2})
    rc, _, err = cli("prune", "--config", first / "recipe.yaml", "--no-eval", "--out", again)
    assert rc == 0, err
    assert (first / "plan.json").read_text() == (again / "plan.json").read_text()
    assert (first / "recipe.yaml").read_text() == (again / "recipe.yaml").read_text()


@pytest.mark.parametrize("command,flags", [
    ("pretrain-prune", ["--target-params", "120K", "--cycle", "2:1", "--quantum", "0.05", "--seq-len", "16",
                        "--batch-size", "4"]),
    ("accel", ["--ratio", "0.1", "--phases", "1", "--seq-len", "16", "--batch-size", "4", "--prune-steps", "1"]),
])
def test_a_saved_training_recipe_replays_the_same_architecture(tmp_path, command, flags):
    (tmp_path / "t.txt").write_text(TEXT)
    first, again = tmp_path / "a", tmp_path / "b"
    rc, _, err = cli(command, "--model", "tiny-llama", "--data", tmp_path / "t.txt", *flags, "--out", first)
    assert rc == 0, err
    rc, _, err = cli(command, "--config", first / "recipe.yaml", "--out", again)
    assert rc == 0, err
    assert _arch(first) == _arch(again)
    assert (first / "plan.json").read_text() == (again / "plan.json").read_text()


def test_export_writes_its_recipe_inside_the_directory(tmp_path):
    out = tmp_path / "hf"
    rc, _, err = cli("export", "--model", "tiny-llama", "--format", "hf", "--out", out)
    assert rc == 0, err
    assert ExportConfig.from_yaml(out / "recipe.yaml") == ExportConfig(model="tiny-llama", format="hf")
    assert ExportConfig.from_yaml(out / "recipe.yaml").format == "hf"


def test_docstring_examples_run():
    """Every recipe and verb docstring example (the ones that need no files) runs as written."""
    import doctest
    import importlib

    for name in ("llmsculpt.config", "llmsculpt.config.prune", "llmsculpt.config.train", "llmsculpt.config.tools",
                 "llmsculpt.api", "llmsculpt.api._common", "llmsculpt.api.prune", "llmsculpt.api.tools"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name


def test_verbs_take_keywords_and_write_only_when_given_out(tmp_path):
    import llmsculpt

    (tmp_path / "t.txt").write_text(TEXT)
    r = llmsculpt.pretrain_prune("tiny-llama", data=tmp_path / "t.txt", target_params="120K", cycle="2:1",
                                 quantum=0.05, seq_len=16, progress=False)
    assert r.out is None and r.report["params_after"] <= 120_000
    assert r.recipe == PretrainPruneConfig(model="tiny-llama", data=str(tmp_path / "t.txt"), target_params=120_000,
                                           cycle="2:1", quantum=0.05, seq_len=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    with pytest.raises(SculptError, match="unknown option 'ratios'"):
        llmsculpt.accel("tiny-llama", data=tmp_path / "t.txt", ratios=0.1)
