"""Calibration samples: seeded, fixed-length token windows from documents.

LLM-Pruner style: documents long enough are sampled and a random window of ``seq_len`` tokens is
cut from each; when documents are short, windows are cut from the concatenated token stream.
Tokenising megabytes is the slow part, so token streams are cached per (tokenizer, texts).
"""

from __future__ import annotations

import hashlib
import os

import torch

from llmsculpt.calibration.text import load_texts
from llmsculpt.errors import SculptError

_TOKEN_CACHE: dict[tuple, list[list[int]]] = {}


def _key(tokenizer, docs: list[str]) -> tuple:
    h = hashlib.sha1()
    for d in docs:
        h.update(d.encode("utf-8", "replace"))
        h.update(b"\0")
    return (id(tokenizer), getattr(tokenizer, "name_or_path", ""), len(tokenizer), h.hexdigest())


def tokenize_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    key = _key(tokenizer, docs)
    if key not in _TOKEN_CACHE:
        if len(_TOKEN_CACHE) > 8:
            _TOKEN_CACHE.clear()
        enc = tokenizer(docs, add_special_tokens=False)["input_ids"]
        _TOKEN_CACHE[key] = [list(ids) for ids in enc]
    return _TOKEN_CACHE[key]


def _windows(tokens: list[list[int]], n: int, seq_len: int, min_length: int, gen: torch.Generator) -> list[list[int]]:
    long_docs = [t for t in tokens if len(t) >= max(min_length, seq_len)]
    out = []
    if len(long_docs) >= n:
        order = torch.randperm(len(long_docs), generator=gen)[:n].tolist()
        for i in order:
            doc = long_docs[i]
            start = int(torch.randint(0, len(doc) - seq_len + 1, (1,), generator=gen))
            out.append(doc[start : start + seq_len])
        return out
    stream = [tok for t in tokens for tok in t]
    for _ in range(n):
        start = int(torch.randint(0, len(stream) - seq_len + 1, (1,), generator=gen))
        out.append(stream[start : start + seq_len])
    return out


def calibration_batch(
    tokenizer,
    source: str | os.PathLike | None = None,
    *,
    texts: list[str] | None = None,
    n_samples: int = 10,
    seq_len: int = 128,
    seed: int = 0,
    min_length: int | None = None,
    split: str = "calibration",
) -> torch.Tensor:
    """LongTensor [n_samples, seq_len] of calibration windows (same seed, same batch).

    ``texts`` (a list of documents) takes precedence over ``source`` (see ``load_texts``).

    Example:
        >>> from llmsculpt.testing import tiny_tokenizer
        >>> calibration_batch(tiny_tokenizer(), texts=["hello world " * 50], n_samples=2, seq_len=16).shape
        torch.Size([2, 16])
    """
    if n_samples < 1 or seq_len < 2:
        raise SculptError(f"need n_samples >= 1 and seq_len >= 2, got {n_samples} and {seq_len}")
    docs = list(texts) if texts is not None else load_texts(source, split=split)
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise SculptError("calibration text is empty")
    tokens = tokenize_documents(tokenizer, docs)
    total = sum(len(t) for t in tokens)
    if total < seq_len + 1:
        raise SculptError(
            f"calibration text too short: {total} tokens, need at least {seq_len + 1} for one sample of "
            f"{seq_len}; give a longer text or a smaller --seq-len"
        )
    gen = torch.Generator().manual_seed(seed)
    rows = _windows(tokens, n_samples, seq_len, min_length or seq_len, gen)
    return torch.tensor(rows, dtype=torch.long)


def calibration_pool(
    tokenizer,
    source: str | os.PathLike | None = None,
    *,
    texts: list[str] | None = None,
    pool_size: int = 64,
    seq_len: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """A pool of candidate samples [pool_size, seq_len] from documents at least ``seq_len`` tokens
    long (shorter ones filtered out, as AdaPruner does), for searches over which samples to use."""
    return calibration_batch(
        tokenizer, source, texts=texts, n_samples=pool_size, seq_len=seq_len, seed=seed, min_length=seq_len
    )
