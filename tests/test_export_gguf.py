"""GGUF export: metadata read back with gguf's reader; llama.cpp's logits match ours (when
llama-cpp-python is installed); bad input leaves no file."""

import numpy as np
import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.io.export_gguf import export_gguf
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model, tiny_tokenizer

PROMPT = "The quick brown fox jumps over the lazy dog. Pruning removes"
# family, heterogeneous -> llama.cpp architecture
CASES = [
    ("tiny-llama", False, "llama"),
    ("tiny-llama-tied", False, "llama"),
    ("tiny-mistral", False, "llama"),
    ("tiny-qwen2", False, "qwen2"),
    ("tiny-qwen3", False, "qwen3"),
    ("tiny-llama", True, "deci"),
    ("tiny-mistral", True, "deci"),
]


def _model(family: str = "tiny-llama", heterogeneous: bool = False):
    tok = tiny_bpe_tokenizer()
    model = tiny_model(family, vocab_size=len(tok), max_position_embeddings=256)
    if heterogeneous:
        plan = Plan.keep_all(architecture(model))
        plan.layers[0].heads, plan.layers[0].kv_heads = [2, 3], [1]
        plan.layers[1].heads, plan.layers[1].kv_heads = [0, 2, 3], [0, 1]  # cluster attention
        plan.layers[2].mlp = list(range(40))
        apply_plan(model, plan)
    return model, tok


def _field(reader, key):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else [f.parts[i].tolist() for i in f.data]


@pytest.mark.parametrize("family,heterogeneous,arch", CASES)
def test_metadata_round_trip(tmp_path, family, heterogeneous, arch):
    import gguf

    model, tok = _model(family, heterogeneous)
    shapes = architecture(model)
    path = export_gguf(model, tok, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == arch
    heads = _field(reader, f"{arch}.attention.head_count")
    kv = _field(reader, f"{arch}.attention.head_count_kv")
    ffn = _field(reader, f"{arch}.feed_forward_length")
    if heterogeneous:
        assert heads == [2, 3, 4, 4] and kv == [1, 3, 2, 2]  # layer 1: K/V duplicated per query head
        assert ffn == [ls.mlp for ls in shapes.layers] and ffn[2] == 40
    else:
        assert (heads, kv, ffn) == (4, 2, shapes.layers[0].mlp)
    assert _field(reader, f"{arch}.attention.key_length") == shapes.head_dim
    tensors = {t.name: t for t in reader.tensors}
    hd, hidden = shapes.head_dim, shapes.hidden
    for i, ls in enumerate(shapes.layers):  # gguf shapes are (columns, rows)
        n_kv = ls.n_kv if ls.is_grouped_evenly else ls.n_heads
        assert tensors[f"blk.{i}.attn_q.weight"].shape.tolist() == [hidden, ls.n_heads * hd]
        assert tensors[f"blk.{i}.attn_k.weight"].shape.tolist() == [hidden, n_kv * hd]
        assert tensors[f"blk.{i}.ffn_down.weight"].shape.tolist() == [ls.mlp, hidden]
    assert ("output.weight" in tensors) == (family != "tiny-llama-tied")
    assert ("blk.0.attn_q.bias" in tensors) == (family == "tiny-qwen2")
    assert ("blk.0.attn_q_norm.weight" in tensors) == (family == "tiny-qwen3")
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert len(_field(reader, "tokenizer.ggml.tokens")) == len(tok)
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert len(_field(reader, "tokenizer.ggml.merges")) > 0


def _llama_logits(path, ids, **kw):
    llama_cpp = pytest.importorskip("llama_cpp")
    # f32 K/V cache so that the comparison measures the export, not llama.cpp's default f16 cache
    llm = llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=64, n_threads=2,
                          type_k=0, type_v=0, **kw)
    try:
        assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids  # same tokenizer
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@pytest.mark.parametrize("family,heterogeneous,arch", CASES)
def test_llama_cpp_logits_match(tmp_path, family, heterogeneous, arch):
    pytest.importorskip("llama_cpp")
    model, tok = _model(family, heterogeneous)
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    theirs = _llama_logits(export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32"), ids)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(ours).max()


@pytest.mark.parametrize("dtype,tol", [("f16", 2e-2), ("q8_0", 5e-2)])
def test_llama_cpp_reduced_precision(tmp_path, dtype, tol):
    pytest.importorskip("llama_cpp")
    model, tok = _model("tiny-llama", True)
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    theirs = _llama_logits(export_gguf(model, tok, tmp_path / "m.gguf", dtype=dtype), ids)
    assert np.abs(ours - theirs).max() < tol * np.abs(ours).max()


def test_bad_input_leaves_no_file(tmp_path, monkeypatch):
    model, tok = _model()
    with pytest.raises(SculptError, match="dtype"):
        export_gguf(model, tok, tmp_path / "x.gguf", dtype="q2")
    for family in ("tiny-qwen2", "tiny-qwen3"):
        het, _ = _model(family, True)
        with pytest.raises(SculptError, match=f"heterogeneous {family[5:]}"):
            export_gguf(het, tok, tmp_path / "y.gguf")
    small = tiny_model("tiny-llama")
    with pytest.raises(SculptError, match="BPE"):
        export_gguf(small, tiny_tokenizer(small.config.vocab_size), tmp_path / "z.gguf")
    with pytest.raises(SculptError, match="does not exist"):
        export_gguf(model, tok, tmp_path / "no" / "z.gguf")
    assert list(tmp_path.iterdir()) == []

    import llmsculpt.io.export_gguf as mod

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "_add_layer", broken)  # fails after the header was started
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(model, tok, tmp_path / "w.gguf")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "v.gguf").write_text("keep me")
    with pytest.raises(SculptError, match="overwrite"):
        export_gguf(model, tok, tmp_path / "v.gguf")
    assert (tmp_path / "v.gguf").read_text() == "keep me"
    export_gguf(model, tok, tmp_path / "v.gguf", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gguf"]


def test_cli_export(tmp_path, capsys):
    from llmsculpt.cli.main import main
    from llmsculpt.io.save import save_pruned

    model, tok = _model("tiny-llama", True)
    save_pruned(model, tok, tmp_path / "het")
    assert main(["export", "--model", str(tmp_path / "het"), "--format", "gguf", "--dtype", "q8_0",
                 "--out", str(tmp_path / "h.gguf")]) == 0
    assert "deci" in capsys.readouterr().out and (tmp_path / "h.gguf").stat().st_size > 10_000
    assert main(["export", "--model", str(tmp_path / "het"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 2
    assert "trust_remote_code" in capsys.readouterr().err and not (tmp_path / "plain").exists()
    uniform, _ = _model("tiny-qwen2")
    save_pruned(uniform, tok, tmp_path / "uni")
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 0
    assert "without remote code" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "gguf", "--out", str(tmp_path / "u.gguf")]) == 0
    assert "qwen2" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "gguf", "--dtype", "q3",
                 "--out", str(tmp_path / "z.gguf")]) == 2
    assert not (tmp_path / "z.gguf").exists()


@pytest.mark.slow
def test_default_model_in_llama_cpp(tmp_path):
    """SmolLM2-135M: llama.cpp tokenizes our export exactly as the original GGUF file (digits
    included) and its logits match PyTorch's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llmsculpt.models.loading import load, smollm2_gguf_path

    loaded = load("smollm2-135m", device="cpu")
    path = export_gguf(loaded.model, loaded.tokenizer, tmp_path / "smollm2.gguf", dtype="f32")
    text = "In 1987, the 3 engineers wrote 12,345 lines of C++ code!\n<|im_start|>user\nHi there<|im_end|>"
    toks = []
    for p in (smollm2_gguf_path(), path):
        llm = llama_cpp.Llama(str(p), vocab_only=True, verbose=False)
        toks.append(llm.tokenize(text.encode(), add_bos=False, special=True))
        llm.close()
    assert toks[0] == toks[1]
    ids = loaded.tokenizer(PROMPT, add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids])).logits[0].numpy()
    theirs = _llama_logits(path, ids)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(ours).max()
