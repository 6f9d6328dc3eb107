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
from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model


def _model(heterogeneous: bool):
    tok = tiny_bpe_tokenizer()
    model = tiny_model("tiny-llama", vocab_size=len(tok), max_position_embeddings=256)
    if heterogeneous:
        plan = Plan.keep_all(architecture(model))
        plan.layers[0].heads, plan.layers[0].kv_heads = [2, 3], [1]
        plan.layers[1].heads, plan.layers[1].kv_heads = [0, 2, 3], [0, 1]  # cluster attention
        plan.layers[2].mlp = list(range(40))
        apply_plan(model, plan)
    return model, tok


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_metadata_round_trip(tmp_path, heterogeneous):
    import gguf

    model, tok = _model(heterogeneous)
    path = export_gguf(model, tok, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert arch == ("deci" if heterogeneous else "llama")
    heads = reader.fields[f"{arch}.attention.head_count"]
    values = [int(heads.parts[i][0]) for i in heads.data]
    assert values == ([2, 3, 4, 4] if heterogeneous else [4])
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.3.ffn_down.weight", "output.weight"} <= names
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(tok)


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_llama_cpp_logits_match(tmp_path, heterogeneous):
    llama_cpp = pytest.importorskip("llama_cpp")
    model, tok = _model(heterogeneous)
    path = export_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    llm = llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=64)
    try:
        ids = tok("The quick brown fox jumps over").input_ids
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 2e-3 * max(1.0, np.abs(ours).max())


def test_bad_input_leaves_no_file(tmp_path):
    model, tok = _model(False)
    with pytest.raises(SculptError, match="dtype"):
        export_gguf(model, tok, tmp_path / "x.gguf", dtype="q2")
    qwen = tiny_model("tiny-qwen2", vocab_size=len(tok))
    with pytest.raises(SculptError, match="qwen2"):
        export_gguf(qwen, tok, tmp_path / "y.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tmp_path, capsys):
    from llmsculpt.cli.main import main
    from llmsculpt.io.save import save_pruned

    model, tok = _model(True)
    save_pruned(model, tok, tmp_path / "het")
    assert main(["export", "--model", str(tmp_path / "het"), "--format", "gguf", "--dtype", "q8_0", "--out", str(tmp_path / "h.gguf")]) == 0
    assert (tmp_path / "h.gguf").stat().st_size > 10_000
    assert main(["export", "--model", str(tmp_path / "het"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 2
    assert "trust_remote_code" in capsys.readouterr().err and not (tmp_path / "plain").exists()
    uniform, _ = _model(False)
    save_pruned(uniform, tok, tmp_path / "uni")
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 0
    assert "without remote code" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "uni"), "--format", "gguf", "--dtype", "q3", "--out", str(tmp_path / "z.gguf")]) == 2
