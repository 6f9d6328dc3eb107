"""Layer-by-layer pruning (``--layer-by-layer``): the same plan and the same saved weights as the
whole-model run, with at most one decoder layer's weights resident at any time."""

from __future__ import annotations

import json

import pytest
import torch

import llmsculpt
from llmsculpt.api import prune
from llmsculpt.errors import SculptError
from llmsculpt.models.residency import FromSafetensors
from llmsculpt.testing import tiny_model, tiny_tokenizer

from _runs import cli
from conftest import FAMILIES

TEXT = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex the bold jury " * 120
METHODS = ("flap", "wanda-sp", "magnitude", "shortgpt")


def _checkpoint(tmp_path, family: str, dtype=torch.float32):
    model = tiny_model(family).to(dtype)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(src)
    return src


def _logits(directory, ids):
    model = llmsculpt.load(str(directory), dtype="auto").model
    with torch.no_grad():
        return model(ids).logits


CASES = [(f, "flap") for f in FAMILIES] + [(f, m) for m in METHODS[1:] for f in ("tiny-llama", "tiny-qwen3")]
SLOW_CASES = [(f, m) for m in METHODS[1:] for f in FAMILIES if f not in ("tiny-llama", "tiny-qwen3")]


@pytest.mark.parametrize("family,method", CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_CASES])
def test_same_plan_and_weights_as_whole_model(tmp_path, family, method):
    src = _checkpoint(tmp_path, family)
    kw = dict(method=method, ratio=0.3, calib_text=TEXT, eval_text=TEXT, eval_windows=3)
    whole = prune(str(src), out=tmp_path / "whole", **kw)
    layered = prune(str(src), out=tmp_path / "layered", layer_by_layer=True, **kw)
    assert layered.plan.to_dict() == whole.plan.to_dict()
    assert layered.report["params_after"] == whole.report["params_after"]
    assert layered.report["ppl_before"] == whole.report["ppl_before"]
    assert layered.report["ppl_after"] == pytest.approx(whole.report["ppl_after"], rel=1e-6)
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(tmp_path / "layered", ids), _logits(tmp_path / "whole", ids))
    saved = json.loads((tmp_path / "layered" / "sculpt_report.json").read_text())
    assert saved["layer_by_layer"] is True and saved["ppl_after"] == layered.report["ppl_after"]


def test_bf16_checkpoint_stays_bf16(tmp_path):
    src = _checkpoint(tmp_path, "tiny-qwen2", torch.bfloat16)
    kw = dict(method="flap", ratio=0.25, calib_text=TEXT, dtype="auto")
    whole = prune(str(src), out=tmp_path / "whole", **kw)
    layered = prune(str(src), out=tmp_path / "layered", layer_by_layer=True, **kw)
    assert layered.plan.to_dict() == whole.plan.to_dict()
    from safetensors import safe_open

    index = json.loads((tmp_path / "layered" / "model.safetensors.index.json").read_text())
    first = next(iter(sorted(set(index["weight_map"].values()))))
    with safe_open(str(tmp_path / "layered" / first), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(tmp_path / "layered", ids), _logits(tmp_path / "whole", ids))


def test_one_layer_resident_at_a_time(tmp_path, monkeypatch):
    """The residency never holds two decoder layers' weights off the meta device."""
    src = _checkpoint(tmp_path, "tiny-llama")
    peak = {"resident": 0}
    load = FromSafetensors.load

    def counting(self, i):
        layer = load(self, i)
        resident = sum(not any(t.is_meta for t in lay.state_dict().values()) for lay in self.layers)
        peak["resident"] = max(peak["resident"], resident)
        return layer

    monkeypatch.setattr(FromSafetensors, "load", counting)
    prune(str(src), method="flap", ratio=0.3, calib_text=TEXT, out=tmp_path / "out", layer_by_layer=True,
          eval_text=TEXT, eval_windows=2)
    assert peak["resident"] == 1


def test_in_memory_model_gives_the_same_plan():
    """A model that is not a safetensors directory (here a built-in) runs layer by layer in memory."""
    kw = dict(method="wanda-sp", ratio=0.3, calib_text=TEXT)
    whole = prune("tiny-qwen3", **kw)
    layered = prune("tiny-qwen3", layer_by_layer=True, **kw)
    assert layered.plan.to_dict() == whole.plan.to_dict()
    assert layered.report["params_after"] == whole.report["params_after"]


def test_dry_run_reads_no_output(tmp_path):
    src = _checkpoint(tmp_path, "tiny-mistral")
    out = prune(str(src), method="shortgpt", ratio=0.3, calib_text=TEXT, layer_by_layer=True, dry_run=True)
    assert out.report["dry_run"] and out.report["params_after"] < out.report["params_before"]
    with pytest.raises(SculptError, match="dry run"):
        out.save(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_refusals(tmp_path):
    src = _checkpoint(tmp_path, "tiny-llama")
    with pytest.raises(SculptError, match="forward-only methods"):
        prune(str(src), method="adaptive", ratio=0.2, calib_text=TEXT, layer_by_layer=True, out=tmp_path / "a")
    with pytest.raises(SculptError, match="give --out"):
        prune(str(src), method="flap", ratio=0.2, calib_text=TEXT, layer_by_layer=True)
    with pytest.raises(SculptError, match="layer_by_layer must be"):
        prune(str(src), method="flap", ratio=0.2, calib_text=TEXT, layer_by_layer="sometimes")
    assert not (tmp_path / "a").exists()


def test_auto_goes_layer_by_layer_only_when_the_whole_model_would_not_fit(tmp_path, monkeypatch):
    import llmsculpt.eval.memory_estimate as memory

    src = _checkpoint(tmp_path, "tiny-llama")
    out = prune(str(src), method="flap", ratio=0.2, calib_text=TEXT, layer_by_layer="auto", out=tmp_path / "o")
    assert "layer_by_layer" not in out.report
    monkeypatch.setattr(memory, "available_host_memory", lambda: 1)  # nothing fits whole any more
    forced = prune(str(src), method="flap", ratio=0.2, calib_text=TEXT, layer_by_layer="auto", out=tmp_path / "p")
    assert forced.report["layer_by_layer"] is True
    assert forced.plan.to_dict() == out.plan.to_dict()
    with pytest.raises(SculptError, match="even layer by layer"):  # a budget it cannot meet either way
        prune(str(src), method="flap", ratio=0.2, calib_text=TEXT, layer_by_layer=True, budget="1MB",
              out=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_cli_flag(tmp_path):
    src = _checkpoint(tmp_path, "tiny-qwen2")
    code, out, err = cli("prune", "--model", str(src), "--method", "flap", "--ratio", "0.3", "--layer-by-layer",
                         "--calib", str(_text(tmp_path)), "--no-eval", "--out", str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert json.loads(out)["layer_by_layer"] is True
    code, out, err = cli("prune", "--model", str(src), "--method", "uniform", "--layer-by-layer", "--out",
                         str(tmp_path / "u"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "forward-only" in err
    assert not (tmp_path / "u").exists()


def _text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["flap", "wanda-sp"])
def test_default_model_streamed_from_safetensors(tmp_path, method):
    """The default model written as a bf16 safetensors directory, pruned whole and layer by layer."""
    loaded = llmsculpt.load(dtype="bfloat16")
    loaded.model.save_pretrained(tmp_path / "src")
    loaded.tokenizer.save_pretrained(tmp_path / "src")
    kw = dict(method=method, ratio=0.25, dtype="auto", eval_text=TEXT, eval_windows=2)
    whole = prune(str(tmp_path / "src"), out=tmp_path / "whole", **kw)
    layered = prune(str(tmp_path / "src"), out=tmp_path / "layered", layer_by_layer=True, **kw)
    assert layered.plan.to_dict() == whole.plan.to_dict()
    assert layered.report["ppl_after"] == pytest.approx(whole.report["ppl_after"], rel=1e-3)
    ids = torch.randint(4, 1000, (1, 16), generator=torch.Generator().manual_seed(2))
    assert torch.equal(_logits(tmp_path / "layered", ids), _logits(tmp_path / "whole", ids))
