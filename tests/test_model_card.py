"""Every saved output directory carries a Hugging Face model card (README.md) that matches its files."""

import yaml

import llmsculpt
from llmsculpt.io.model_card import model_card

TEXT = "Pruning removes heads and channels; training recovers what was lost. " * 80


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_saved_directory_has_card(tmp_path):
    out = llmsculpt.prune("tiny-qwen2", ratio=0.3, method="adaptive", calib_text=TEXT, eval_text=TEXT)
    out.save(tmp_path / "q")
    card = (tmp_path / "q" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and "llmsculpt" in meta["tags"] and "qwen2" in meta["tags"]
    assert "base_model" not in meta  # not known for a built-in tiny model
    report = out.report
    assert f"{report['params_before']:,} -> {report['params_after']:,}" in card
    assert f"{report['ppl_before']:.2f} -> {report['ppl_after']:.2f}" in card
    table = [line for line in card.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == out.model.config.num_hidden_layers
    assert 'from_pretrained("q", trust_remote_code=True)' in card and "--format vllm" in card
    assert "llama.cpp: not available" in card  # per-layer qwen2 has no GGUF route


def test_card_for_known_source_and_plain_model():
    arch = {"model_type": "llama", "plain_transformers": True,
            "layers": [{"n_heads": 9, "n_kv": 3, "mlp": 1536, "kv_map": []}] * 2}
    card = model_card({"config": {"model": "smollm2-135m"}, "method": "uniform"}, arch, name="smol")
    meta = _front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert "trust_remote_code" not in card and "vllm serve smol\n" in card and "llama-cli -m smol.gguf" in card
