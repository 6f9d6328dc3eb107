"""Tiny random models of every supported family, built in memory, for tests and quick tries."""

from llmsculpt.testing.tiny import TINY_MODELS, tiny_bpe_tokenizer, tiny_model, tiny_tokenizer

__all__ = ["TINY_MODELS", "tiny_bpe_tokenizer", "tiny_model", "tiny_tokenizer"]
