"""Tiny random models (2-4 layers, hidden 64, 4 query heads / 2 K/V heads, vocab 128).

``tiny_model("tiny-llama")`` builds one in memory from the transformers config class, seeded, so
tests and users get the same weights every time without touching a hub.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# name -> (config class, settings beyond the common ones)
TINY_MODELS = {
    "tiny-llama": (LlamaConfig, {"head_dim": 16}),
    "tiny-llama-tied": (LlamaConfig, {"head_dim": 16, "tie_word_embeddings": True}),
    "tiny-mistral": (MistralConfig, {"head_dim": 16, "sliding_window": None}),
    "tiny-qwen2": (Qwen2Config, {}),
    "tiny-qwen3": (Qwen3Config, {"head_dim": 16}),
}


def tiny_model(name: str = "tiny-llama", *, seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded random causal LM of the named tiny family, in fp32 eval mode.

    Example:
        >>> m = tiny_model("tiny-qwen3", num_hidden_layers=2)
        >>> m.config.num_key_value_heads
        2
    """
    if name not in TINY_MODELS:
        from llmsculpt.errors import SculptError

        raise SculptError(f"unknown tiny model {name!r}; choose one of: {', '.join(TINY_MODELS)}")
    cls, extra = TINY_MODELS[name]
    config = cls(**{**_COMMON, **extra, **overrides})
    config._attn_implementation = "sdpa"
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # random init of norms is all-ones; perturb so that norm pruning is actually tested
        with torch.no_grad():
            for name_, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_tokenizer(vocab_size: int = 128) -> PreTrainedTokenizerFast:
    """A byte-level-ish character tokenizer with ``vocab_size`` ids, no files needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 32 + vocab_size - 4)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(chars)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    return fast


def tiny_bpe_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style, like SmolLM's) trained in memory on a fixed text;
    for tests of exporters that need a real BPE vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = ["The quick brown fox jumps over the lazy dog. Pruning removes heads and channels."] * 50
    tok.train_from_iterator(text, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
