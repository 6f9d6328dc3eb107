"""GGUF export: metadata read back with gguf's reader; llama.cpp's logits match ours (when
llama-cpp-python is installed), RoPE scaling (llama3, linear, yarn) included; q8_0 quantises every
matrix or refuses naming them; bad input leaves no file."""

import re
import warnings

import numpy as np
import pytest
import torch

from llmsculpt.errors import SculptError
from llmsculpt.io.export_gguf import MixedQuantWarning, export_gguf
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture
from llmsculpt.surgery import apply_plan
from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model, tiny_tokenizer

PROMPT = "The quick brown fox jumps over the lazy dog. Pruning removes"
LONG = " ".join([PROMPT] * 14)  # ~170 tokens: well past original_max_position_embeddings below
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


def _model(family: str = "tiny-llama", heterogeneous: bool = False, **overrides):
    tok = tiny_bpe_tokenizer()
    model = tiny_model(family, vocab_size=len(tok), **{"max_position_embeddings": 256, **overrides})
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


def _open_llama(path, **kw):
    pytest.importorskip("llama_cpp")
    from llmsculpt.testing.llama_cpp import open_llama

    return open_llama(path, **kw)


def _llama_logits(path, ids, text=PROMPT, n_ctx=64, **kw):
    # f32 K/V cache so that the comparison measures the export, not llama.cpp's default f16 cache
    llm = _open_llama(path, logits_all=True, verbose=False, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2,
                      type_k=0, type_v=0, **kw)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # same tokenizer
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


@pytest.mark.parametrize("dtype,tol,heterogeneous", [("f16", 2e-2, True), ("q8_0", 5e-2, False),
                                                      ("q8_0", 5e-2, True)])
def test_llama_cpp_reduced_precision(tmp_path, dtype, tol, heterogeneous):
    pytest.importorskip("llama_cpp")
    model, tok = _model("tiny-llama", heterogeneous)
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    path = tmp_path / "m.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MixedQuantWarning)  # heterogeneous q8_0: some widths are not 32k
        theirs = _llama_logits(export_gguf(model, tok, path, dtype=dtype, allow_mixed=True), ids)
    assert np.abs(ours - theirs).max() < tol * np.abs(ours).max()


# Llama-3.1-style RoPE at tiny scale: head_dim 16 has wavelengths 6 .. 2e4, so with an original context of
# 64 (high-frequency cut 16, low-frequency cut 64) one frequency is kept, two are smoothed, five divided.
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
LINEAR = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}
YARN_ATTN = {**YARN, "attention_factor": 1.5}


def _plain_inv_freq(model) -> torch.Tensor:
    theta, dim = model.config.rope_parameters["rope_theta"], architecture(model).head_dim
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


@pytest.mark.parametrize("heterogeneous,arch", [(False, "llama"), (True, "deci")])
def test_llama3_rope_freqs_are_transformers_ratio(tmp_path, heterogeneous, arch):
    """rope_freqs.weight (f32, head_dim/2) = plain inv_freq / transformers' llama3 inv_freq; no scaling keys."""
    import gguf

    model, tok = _model("tiny-llama", heterogeneous, rope_parameters=dict(LLAMA3))
    reader = gguf.GGUFReader(export_gguf(model, tok, tmp_path / "m.gguf", dtype="f16"))
    assert _field(reader, "general.architecture") == arch
    freqs = {t.name: t for t in reader.tensors}["rope_freqs.weight"]
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32 and freqs.shape.tolist() == [8]
    expected = (_plain_inv_freq(model) / model.model.rotary_emb.inv_freq).numpy()
    np.testing.assert_allclose(np.asarray(freqs.data), expected, rtol=1e-6)
    assert expected[0] == 1.0 and 1.0 < expected[1] < expected[2] < 8.0 and (expected[3:] == 8.0).all()
    assert f"{arch}.rope.scaling.type" not in reader.fields  # llama.cpp's converter writes none for llama3
    assert _field(reader, f"{arch}.rope.freq_base") == 10000.0


@pytest.mark.parametrize("rope,keys", [
    (LINEAR, {"type": "linear", "factor": 4.0}),
    (YARN, {"type": "yarn", "factor": 4.0, "original_context_length": 64}),
    (YARN_ATTN, {"type": "yarn", "factor": 4.0, "original_context_length": 64}),
])
def test_rope_scaling_metadata(tmp_path, rope, keys):
    import gguf

    model, tok = _model("tiny-llama", rope_parameters=dict(rope))
    reader = gguf.GGUFReader(export_gguf(model, tok, tmp_path / "m.gguf"))
    assert {k: _field(reader, f"llama.rope.scaling.{k}") for k in keys} == pytest.approx(keys)
    attn = "llama.rope.scaling.attn_factor"
    if "attention_factor" in rope:  # llama.cpp multiplies its own 0.1 ln(factor) + 1 by this
        assert _field(reader, attn) == pytest.approx(1.5 / (0.1 * np.log(4.0) + 1))
    else:
        assert attn not in reader.fields
    assert "rope_freqs.weight" not in {t.name for t in reader.tensors}


@pytest.mark.parametrize("rope", [LLAMA3, LINEAR, YARN])
def test_scaled_rope_gguf_reloads_with_its_scaling(tmp_path, monkeypatch, rope):
    """transformers' GGUF reader drops RoPE scaling; llmsculpt.load restores it from our export (same
    logits past the original context), and refuses a foreign file whose scaling it cannot restore."""
    import gguf

    from llmsculpt.models.loading import load

    monkeypatch.setenv("LLMSCULPT_CACHE", str(tmp_path / "cache"))
    model, tok = _model("tiny-llama", rope_parameters=dict(rope))
    path = export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    back = load(path, device="cpu").model
    assert back.config.rope_parameters["rope_type"] == rope["rope_type"]
    ids = torch.tensor([tok(LONG)["input_ids"][:160]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    # the same file without our key, as another converter would write it
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(tmp_path / "foreign.gguf", arch="llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "llmsculpt.rope_parameters"):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SculptError, match="scaled RoPE"):
        load(tmp_path / "foreign.gguf", device="cpu")


@pytest.mark.parametrize("family,heterogeneous,rope", [
    ("tiny-llama", False, LLAMA3), ("tiny-llama", True, LLAMA3), ("tiny-mistral", True, LLAMA3),
    ("tiny-llama", False, LINEAR), ("tiny-llama", False, YARN), ("tiny-llama", True, YARN_ATTN),
    ("tiny-qwen2", False, YARN), ("tiny-qwen3", False, LINEAR),
])
def test_llama_cpp_rope_scaling_logits(tmp_path, family, heterogeneous, rope):
    """Over ~170 positions llama.cpp's logits match ours, and the scaling changes them by far more."""
    pytest.importorskip("llama_cpp")
    model, tok = _model(family, heterogeneous, rope_parameters=dict(rope))
    plain, _ = _model(family, heterogeneous)
    ids = tok(LONG, add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
        unscaled = plain(torch.tensor([ids])).logits[0].numpy()
    theirs = _llama_logits(export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32"), ids, text=LONG, n_ctx=256)
    diff, scale = np.abs(ours - theirs).max(), np.abs(ours).max()
    print(f"{family} {'het' if heterogeneous else 'uniform'} {rope['rope_type']}: max |diff| {diff:.2e} "
          f"of {scale:.2f}, scaling moves logits by {np.abs(ours - unscaled).max():.2e}")
    assert diff < 1e-3 * scale
    assert np.abs(ours - unscaled).max() > 100 * diff


@pytest.mark.parametrize("family,rope,match", [
    ("tiny-llama", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, "rope scaling 'dynamic'"),
    ("tiny-qwen2", LLAMA3, "'llama3' needs per-frequency factors .* qwen2 graph"),
    ("tiny-qwen3", LLAMA3, "'llama3' needs per-frequency factors .* qwen3 graph"),
    ("tiny-llama", {**YARN, "beta_fast": 64}, "'yarn' with beta_fast=64"),
    ("tiny-llama", {"rope_type": "linear", "rope_theta": 10000.0}, "'linear' without 'factor'"),
])
def test_unsupported_rope_is_one_line_and_no_file(tmp_path, family, rope, match):
    model, tok = _model(family)
    model.config.rope_parameters = dict(rope)  # after init: transformers would reject some of these
    with pytest.raises(SculptError, match=match) as err:
        export_gguf(model, tok, tmp_path / "m.gguf")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_q8_0_quantises_every_matrix_or_refuses(tmp_path):
    import gguf

    q8 = gguf.GGMLQuantizationType.Q8_0
    model, tok = _model("tiny-llama")  # hidden 64, MLP 96, 4 x 16 heads: every width a multiple of 32
    reader = gguf.GGUFReader(export_gguf(model, tok, tmp_path / "u.gguf", dtype="q8_0"))
    matrices = [t for t in reader.tensors if len(t.shape) == 2]
    assert matrices and all(t.tensor_type == q8 for t in matrices)

    het, _ = _model("tiny-llama", True)  # layer 1: 3 heads -> attn_output width 48; layer 2: MLP 40
    with pytest.raises(SculptError) as err:
        export_gguf(het, tok, tmp_path / "h.gguf", dtype="q8_0")
    msg = str(err.value)
    assert "\n" not in msg and "--round-to 32" in msg and "not a multiple of 32" in msg and "--allow-mixed" in msg
    assert "blk.1.attn_output.weight (width 48)" in msg and "blk.2.ffn_down.weight (width 40)" in msg
    assert "more" not in msg
    narrow, _ = _model("tiny-llama", intermediate_size=40)  # four ffn_down of width 40
    with pytest.raises(SculptError, match=r"4 of \d+ matrices .*blk\.2\.ffn_down\.weight \(width 40\) and 1 more"):
        export_gguf(narrow, tok, tmp_path / "n.gguf", dtype="q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.gguf"]

    with pytest.warns(MixedQuantWarning, match="kept 2 matrices f16.*blk.1.attn_output.weight"):
        path = export_gguf(het, tok, tmp_path / "h.gguf", dtype="q8_0", allow_mixed=True)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    f16 = {n for n, t in types.items() if t == gguf.GGMLQuantizationType.F16}
    assert f16 == {"blk.1.attn_output.weight", "blk.2.ffn_down.weight"}
    assert all(t == q8 for n, t in types.items() if n not in f16)


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

    monkeypatch.setattr(mod, "_array", broken)  # fails while the temporary file is being written
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


def _stderr_lines(err: str) -> list[str]:
    """stderr lines, progress bars (tqdm's \\r-redrawn ``NN%|`` lines) aside."""
    lines = (line.rsplit("\r", 1)[-1] for line in err.split("\n"))
    return [line for line in lines if line.strip() and not re.search(r"\d+%\|", line)]


def test_cli_export(tmp_path, capsys):
    from llmsculpt.cli.main import main
    from llmsculpt.io.save import save_pruned

    model, tok = _model("tiny-llama", True)
    save_pruned(model, tok, tmp_path / "het")
    q8 = ["export", "--model", str(tmp_path / "het"), "--format", "gguf", "--dtype", "q8_0",
          "--out", str(tmp_path / "h.gguf")]
    assert main(q8) == 2  # widths 48 and 40 cannot be q8_0: one line, nothing written
    err = _stderr_lines(capsys.readouterr().err)
    assert len(err) == 1 and "blk.1.attn_output.weight" in err[0] and "--round-to 32" in err[0]
    assert not (tmp_path / "h.gguf").exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert main(q8 + ["--allow-mixed"]) == 0
    out = capsys.readouterr()
    assert "deci" in out.out and (tmp_path / "h.gguf").stat().st_size > 10_000
    err = _stderr_lines(out.err)
    assert len(err) == 1 and err[0].startswith("sculpt export: warning: q8_0 export: kept 2 matrices f16")
    assert main(["export", "--model", str(tmp_path / "het"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 2
    assert "trust_remote_code" in capsys.readouterr().err and not (tmp_path / "plain").exists()
    uniform, _ = _model("tiny-qwen2")
    save_pruned(uniform, tok, tmp_path / "uni")
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 0
    assert "without remote code" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "gguf", "--out", str(tmp_path / "u.gguf")]) == 0
    assert "qwen2" in capsys.readouterr().out
    from llmsculpt.config import ExportConfig  # the effective recipe beside the file; it replays the export

    recipe = tmp_path / "u.gguf.recipe.yaml"
    assert ExportConfig.from_yaml(recipe) == ExportConfig(model=str(tmp_path / "uni"), format="gguf", dtype="f16")
    assert main(["export", "--config", str(recipe), "--out", str(tmp_path / "v.gguf")]) == 0
    assert (tmp_path / "v.gguf").read_bytes() == (tmp_path / "u.gguf").read_bytes()
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


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"])
def test_f32_gguf_reloads_with_identical_logits(tmp_path, monkeypatch, family):
    """export -> llmsculpt.load is exact at f32 for every uniform family (head_dim read from the
    file: transformers' GGUF reader alone leaves Qwen3's at its default of 128)."""
    from llmsculpt.models.loading import load

    monkeypatch.setenv("LLMSCULPT_CACHE", str(tmp_path / "cache"))
    model, tok = _model(family)
    back = load(export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32"), device="cpu", dtype=torch.float32).model
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


@pytest.mark.parametrize("family,heterogeneous,arch", CASES)
def test_inspect_reads_gguf_metadata(tmp_path, family, heterogeneous, arch):
    """`inspect` of a GGUF file reads its shapes from the metadata (no conversion, no weights): the
    table is the exported model's, a cluster-attention layer shown with the K/V heads the file holds."""
    import dataclasses

    import llmsculpt

    model, tok = _model(family, heterogeneous)
    path = export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    want = architecture(model)
    if heterogeneous:  # layer 1 (cluster attention) is written with one K/V head per query head
        layers = list(want.layers)
        layers[1] = dataclasses.replace(layers[1], n_kv=3, kv_map=(0, 1, 2))
        want = dataclasses.replace(want, layers=tuple(layers))
    got = llmsculpt.inspect(path).architecture
    assert got == dataclasses.replace(want, model_type="llama" if family == "tiny-mistral" else want.model_type)
