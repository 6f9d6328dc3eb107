"""--dtype / --device end to end: the invariants of test_surgery.py and test_save_load.py again in
bfloat16 (tolerances stated per test), the dtype that is saved, and the one-line refusals."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

import llmsculpt
from llmsculpt.cli.main import main
from llmsculpt.errors import SculptError
from llmsculpt.models.loading import load
from llmsculpt.models.placement import parse_dtype, place, resolve_device
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_model
from llmsculpt.testing.masking import mask_plan

from conftest import FAMILIES

X = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
TEXT = "the quick brown fox jumps over the lazy dog. " * 60


def _plan(arch):
    p = Plan.keep_all(arch)
    p.layers[0].heads, p.layers[0].kv_heads = [2, 3], [1]
    p.layers[1].mlp = list(range(0, arch.layers[1].mlp, 2))
    p.layers[2].drop = True
    return p


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_equals_masked_in_bf16(family):
    """bf16 rounds differently in differently shaped matmuls: logits agree to 2 % of their range
    (fp32 agrees to 1e-5, test_surgery.py), and the argmax agrees on ≥ 95 % of positions."""
    model = place(tiny_model(family, rms_norm_eps=1e-12), dtype=torch.bfloat16)  # rotary tables stay fp32
    plan = _plan(architecture(model))
    with torch.no_grad():
        ref = mask_plan(copy.deepcopy(model), plan)(X).logits.float()
        pruned = apply_plan(copy.deepcopy(model), plan)
        assert next(pruned.parameters()).dtype == torch.bfloat16
        out = pruned(X).logits.float()
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2"])
def test_bf16_prune_saves_bf16_and_reloads_exactly(family, tmp_path):
    """Save → load in bf16 is exact (same bf16 weights, same kernels): torch.equal on logits."""
    out = llmsculpt.prune(family, ratio=0.3, method="adaptive", calib_text=TEXT, dtype="bfloat16",
                          options={"steps": 2}, n_samples=4, seq_len=16)
    assert all(p.dtype == torch.bfloat16 for p in out.model.parameters())
    out.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    back = load(tmp_path / "m", dtype="auto", device="cpu").model
    assert next(back.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(back(X).logits, out.model(X).logits)


def test_heterogeneous_bf16_round_trip(tmp_path):
    model = place(tiny_model("tiny-mistral"), dtype=torch.bfloat16)  # rotary tables fp32, as loading keeps them
    plan = Plan.keep_all(architecture(model))
    plan.layers[1].mlp = list(range(7))  # per-layer widths: our own config class
    apply_plan(model, plan)
    from llmsculpt.io.save import save_pruned
    from llmsculpt.testing import tiny_tokenizer

    save_pruned(model, tiny_tokenizer(), tmp_path / "h")
    back = load(tmp_path / "h", dtype="auto", device="cpu").model
    assert next(back.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(back(X).logits, model(X).logits)


def test_same_seed_same_plan_in_bf16():
    """Exact: the same bf16 computation twice gives the same scores, hence the same plan."""
    plans = [llmsculpt.prune("tiny-qwen3", ratio=0.25, method="adaptive", calib_text=TEXT, dtype="bfloat16",
                             options={"steps": 2}, n_samples=4, seq_len=16, seed=3).plan.to_dict() for _ in range(2)]
    assert plans[0] == plans[1]


def test_auto_is_the_default_dtype():
    """No --dtype means the checkpoint's own: a tiny built-in is fp32, the default GGUF and a bf16
    directory load as bf16, and every recipe says auto."""
    assert next(load("tiny-llama").model.parameters()).dtype == torch.float32
    assert next(llmsculpt.load("smollm2-135m").model.parameters()).dtype == torch.bfloat16
    import dataclasses

    from llmsculpt.config import tools, train

    recipes = [llmsculpt.PruneConfig, llmsculpt.SearchConfig, train.AccelConfig, train.FinetuneConfig,
               train.PretrainPruneConfig, tools.EvalConfig]
    defaults = {cls.__name__: {f.name: f.default for f in dataclasses.fields(cls)}.get("dtype") for cls in recipes}
    assert defaults == dict.fromkeys(defaults, "auto")


def test_parse_and_resolve():
    assert parse_dtype("auto") is None and parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("float16") is torch.float16 and parse_dtype(torch.float32) is torch.float32
    with pytest.raises(SculptError, match="choose one of"):
        parse_dtype("int8")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(SculptError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(SculptError, match="unknown device"):
        resolve_device("tpu:x")


def test_cli_prune_bf16_then_finetune_bf16(tmp_path, capsys):
    assert main(["prune", "--model", "tiny-llama", "--method", "uniform", "--ratio", "0.2", "--dtype", "bfloat16",
                 "--device", "cpu", "--n-samples", "2", "--seq-len", "16", "--no-eval", "--out", str(tmp_path / "p"),
                 "--no-plots"]) == 0
    assert json.loads((tmp_path / "p" / "config.json").read_text())["dtype"] == "bfloat16"
    capsys.readouterr()
    data = tmp_path / "d.txt"
    data.write_text(TEXT)
    rc = main(["finetune", "--model", str(tmp_path / "p"), "--dtype", "auto", "--data", str(data),
               "--format", "text", "--grad-accum", "2", "--out", str(tmp_path / "f")])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    assert json.loads((tmp_path / "f" / "config.json").read_text())["dtype"] == "bfloat16"  # mixed precision, saved BF16
    assert main(["eval", "--model", str(tmp_path / "p"), "--dtype", "auto", "--text", str(data), "--seq-len", "16",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] > 0


@pytest.mark.slow
def test_real_checkpoint_prunes_in_bf16_saves_bf16_and_reloads_exactly(tmp_path):
    """Issue 16's done-when on a real checkpoint: the default model (a GGUF, so `auto` is bf16),
    adaptive at 25 %, saved as BF16 safetensors, reloaded by plain transformers with equal logits."""
    from transformers import AutoModelForCausalLM

    out = llmsculpt.prune("smollm2-135m", ratio=0.25, method="adaptive", options={"steps": 1}, n_samples=4,
                          seq_len=64, out=tmp_path / "m")
    assert all(p.dtype == torch.bfloat16 for p in out.model.parameters())
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype="auto", trust_remote_code=True)
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, out.model(ids).logits)
