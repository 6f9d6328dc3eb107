"""Fixtures for the unit layer: hand-built architectures and one-layer tiny models.

Everything here is small enough that the whole of tests/unit runs in seconds; the only model is
a one-layer tiny Llama built in memory (hidden 64, 4 query heads / 2 K/V heads of dim 16, MLP 96).
"""

from __future__ import annotations

import pytest
import torch

from llmsculpt.structures.shapes import Architecture, LayerShape


def gqa_layer(n_heads: int = 4, n_kv: int = 2, mlp: int = 96) -> LayerShape:
    rep = n_heads // n_kv
    return LayerShape(n_heads=n_heads, n_kv=n_kv, mlp=mlp, kv_map=tuple(h // rep for h in range(n_heads)))


def make_arch(n_layers: int = 4, *, n_heads: int = 4, n_kv: int = 2, mlp: int = 96, hidden: int = 64,
              head_dim: int = 16) -> Architecture:
    """The tiny-llama architecture (or a variant), written by hand: no model needed."""
    layer = gqa_layer(n_heads, n_kv, mlp)
    return Architecture(model_type="llama", vocab=128, hidden=hidden, head_dim=head_dim,
                        layers=(layer,) * n_layers, tied=False, qkv_bias=False)


@pytest.fixture
def arch() -> Architecture:
    return make_arch()


@pytest.fixture
def arch_of():
    """``arch_of(n_layers=..., n_heads=..., ...)``: build a hand-written architecture in a test."""
    return make_arch


@pytest.fixture
def tiny1() -> torch.nn.Module:
    """A fresh one-layer tiny Llama (fp32, eval mode, seeded)."""
    from llmsculpt.testing.tiny import tiny_model

    return tiny_model("tiny-llama", num_hidden_layers=1)
