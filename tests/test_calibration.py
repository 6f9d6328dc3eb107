"""Calibration sources and samples; perplexity against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmsculpt.calibration import calibration_batch, default_documents, load_texts
from llmsculpt.calibration.text import clean_wikitext
from llmsculpt.errors import SculptError
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.testing import tiny_model, tiny_tokenizer

DOCS = ["First document about pruning heads and channels. " * 20, "Second one, about layers. " * 30]


def test_batches_are_seeded_and_shaped():
    tok = tiny_tokenizer()
    a = calibration_batch(tok, texts=DOCS, n_samples=5, seq_len=24, seed=7)
    b = calibration_batch(tok, texts=DOCS, n_samples=5, seq_len=24, seed=7)
    c = calibration_batch(tok, texts=DOCS, n_samples=5, seq_len=24, seed=8)
    assert a.shape == (5, 24) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_short_and_empty_text_errors(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(SculptError, match="too short"):
        calibration_batch(tok, texts=["abc"], n_samples=1, seq_len=16)
    with pytest.raises(SculptError, match="empty"):
        calibration_batch(tok, texts=["   "], n_samples=1, seq_len=16)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(SculptError, match="empty"):
        load_texts(tmp_path / "e.txt")
    with pytest.raises(SculptError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")


def test_jsonl_sources_and_line_numbers(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"text": "hello"}\n\n{"instruction": "Do", "input": "this", "output": "done"}\n')
    assert load_texts(good) == ["hello", "Do\nthis\ndone"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(SculptError, match=r"bad.jsonl:2"):
        load_texts(bad)
    with pytest.raises(SculptError, match="no field 'body'"):
        load_texts(good, field="body")


def test_wikitext_cleaning():
    raw = "'''Bold''' text with a [[Link|label]] and {{cite|x={{y}}}} ref<ref>r</ref> here, in a sentence.\n[[Category:X]]"
    assert clean_wikitext(raw) == "Bold text with a label and ref here, in a sentence."


def test_default_text_is_real_prose():
    docs = default_documents("calibration")
    held = default_documents("heldout")
    assert len(docs) > 40 and len(held) > 10 and not set(docs) & set(held)
    text = "\n".join(docs)
    assert len(text) > 1_000_000
    assert text.count(". ") > 5000 and "{{" not in text and "<ref" not in text


def test_perplexity_matches_independent_cross_entropy():
    model, tok = tiny_model("tiny-llama"), tiny_tokenizer()
    text = "abcdefghij" * 20
    res = perplexity(model, tok, text, seq_len=25, batch_size=3)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][: 8 * 25]).view(8, 25)
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, 128), ids[:, 1:].reshape(-1))
    assert res.windows == 8 and res.tokens == 8 * 24
    assert math.isclose(res.ppl, math.exp(ce.item()), rel_tol=1e-5)
    assert perplexity(model, tok, text, seq_len=25, max_windows=2).windows == 2
    with pytest.raises(SculptError, match="too short"):
        perplexity(model, tok, "ab", seq_len=25)
    with pytest.raises(SculptError, match="context"):
        perplexity(model, tok, text, seq_len=100_000)
