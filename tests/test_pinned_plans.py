"""Plans (and pruned weights) of every method at a fixed seed, pinned before the engine redesign.

``tests/data/pinned_plans.json`` was written by this file (``PIN=1 pytest tests/test_pinned_plans.py``)
from the code before measuring, planning and running were rebuilt; every method must still produce
exactly those plans and, to float tolerance, the same pruned logits. Regenerate it only for a change
that is meant to alter results, and say so in the commit.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from llmsculpt.testing import tiny_model, tiny_tokenizer

from _runs import TEXT, accel_case, pretrain_case

PINNED = Path(__file__).parent / "data" / "pinned_plans.json"
CALIB = "The pruned model keeps its most important heads and channels. " * 60
X = torch.randint(4, 128, (2, 12), generator=torch.Generator().manual_seed(3))
SAMPLE_AWARE = {"samples": [0, 2, 3], "pool_size": 5, "pool_seed": 0, "alpha1": 0.4, "alpha2": 0.7,
                "lambda1": 1.5, "lambda2": 0.01}

CASES = {  # name -> (family, prune keywords)
    "uniform-llama": ("tiny-llama", dict(method="uniform", ratio=0.3)),
    "uniform-qwen3-head": ("tiny-qwen3", dict(method="uniform", ratio=0.25, attn_unit="head", metric="taylor_mix")),
    "adaptive-llama": ("tiny-llama", dict(method="adaptive", ratio=0.3, options={"steps": 3})),
    "adaptive-qwen2": ("tiny-qwen2", dict(method="adaptive", ratio=0.35, options={"steps": 2, "amplitude": 2.0})),
    "adaptive-mistral-round": ("tiny-mistral", dict(method="adaptive", ratio=0.3, round_to=8)),
    "magnitude-qwen2": ("tiny-qwen2", dict(method="magnitude", ratio=0.3)),
    "wanda-sp-llama-tied": ("tiny-llama-tied", dict(method="wanda-sp", ratio=0.3)),
    "flap-llama": ("tiny-llama", dict(method="flap", ratio=0.3)),
    "flap-qwen3-head": ("tiny-qwen3", dict(method="flap", ratio=0.3, attn_unit="head")),
    "shortgpt-llama": ("tiny-llama", dict(method="shortgpt", ratio=0.2, options={})),
    "sample-aware-qwen2": ("tiny-qwen2", dict(method="sample_aware", ratio=0.3, options=SAMPLE_AWARE)),
}


def _prune(family: str, kw: dict):
    import llmsculpt

    kw = dict(kw)
    data = {"n_samples": 4, "seq_len": 32}
    model = tiny_model(family, num_hidden_layers=4) if kw["method"] == "shortgpt" else tiny_model(family)
    out = llmsculpt.prune(model, tokenizer=tiny_tokenizer(), calib_text=CALIB, seed=0, **data, **kw)
    return out.plan, out.model


def _summary(plan, model) -> dict:
    layers = [{k: v for k, v in lp.items() if k != "index"} for lp in plan.to_dict()["layers"]]
    with torch.no_grad():
        logits = model(input_ids=X).logits.double()
    return {"hidden": plan.hidden, "layers": layers,
            "logits": [float(logits.sum()), float(logits.abs().sum()), float(logits[0, -1, :8].sum())]}


def _run_case(name: str) -> dict:
    if name in CASES:
        return _summary(*_prune(*CASES[name]))
    if name.startswith("pretrain"):
        from llmsculpt.run import pretrain_prune

        model, tok, examples, cfg = pretrain_case(**({"metric": "obc"} if name == "pretrain-obc-obs" else {}))
        model, plan, _ = pretrain_prune(model, tok, examples, cfg, progress=False)
        return _summary(plan, model)
    from llmsculpt.run import run_accel
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model, tok, examples, cfg = accel_case(Path(tmp) / "t.txt")
        model, plan, _ = run_accel(model, tok, examples, cfg, checkpoint_dir=Path(tmp) / "c", progress=False)
        return _summary(plan, model)


NAMES = list(CASES) + ["pretrain-taylor-obs", "pretrain-obc-obs", "accel-adaptive"]


def _pinned() -> dict:
    return json.loads(PINNED.read_text()) if PINNED.is_file() else {}


@pytest.mark.parametrize("name", NAMES)
def test_plan_is_the_pinned_one(name):
    got = _run_case(name)
    if os.environ.get("PIN") == "1":
        data = _pinned()
        data[name] = got
        PINNED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        pytest.skip("pinned")
    want = _pinned()[name]
    assert got["hidden"] == want["hidden"]
    assert got["layers"] == want["layers"]
    for a, b in zip(got["logits"], want["logits"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-3)
