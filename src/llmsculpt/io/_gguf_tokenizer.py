"""Byte-level BPE tokenizer metadata for GGUF files (``tokenizer.ggml.*``).

llama.cpp re-implements the tokenizer from the file: the vocabulary, the merges, token types,
special ids, whether BOS/EOS are added, and the *pre-tokenizer* -- the regex split applied before BPE,
which llama.cpp knows by name (``tokenizer.ggml.pre``). We derive that name from the structure of the
Hugging Face tokenizer's pre-tokenizer, so the file tokenizes as the in-memory tokenizer does.

One exception: SmolLM's real tokenizer splits digits one by one (llama.cpp's ``smollm``), but the
tokenizer that transformers rebuilds from a GGUF file -- which is how llmsculpt loads its default
model -- lost that step. For SmolLM's vocabulary we therefore write ``smollm``, which is what the
model was trained with and what the original GGUF file says.
"""

from __future__ import annotations

import json

from llmsculpt.errors import SculptError

PRE_TOKENIZERS = ("gpt-2", "smollm", "llama-bpe", "qwen2")
_SMOLLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else {}
    if data.get("model", {}).get("type") != "BPE":
        raise SculptError(
            "GGUF export needs a fast byte-level BPE tokenizer (GPT-2 style: SmolLM, Llama-3, Qwen2); "
            f"this tokenizer is {type(tokenizer).__name__} with model {data.get('model', {}).get('type')!r}"
        )
    return data


def _steps(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def _pre_name(data: dict) -> str | None:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or None when we do not recognise it."""
    steps = _steps(data.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        vocab = data["model"]["vocab"]
        specials = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        if len(vocab) == 49152 and all(specials.get(s) == i for i, s in enumerate(_SMOLLM_SPECIALS)):
            return "smollm"  # see the module docstring
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex", "")
        if "\\p{N}{1,3}" in regex:
            return "llama-bpe"
        if "\\p{L}+|\\p{N}|" in regex:
            return "qwen2"
    return None


def check_tokenizer(tokenizer, *, vocab: int, pre_tokenizer: str | None = None) -> str:
    """Validate the tokenizer for GGUF (before any file is written); return the pre-tokenizer name."""
    data = _backend(tokenizer)
    n = _n_tokens(data)
    if n > vocab:
        raise SculptError(f"the tokenizer has {n} tokens but the model's embedding only {vocab} rows; "
                          "they do not belong together")
    pre = pre_tokenizer or _pre_name(data)
    if pre is None:
        raise SculptError(
            "GGUF export: unrecognised pre-tokenizer "
            f"{json.dumps(data.get('pre_tokenizer'))[:200]}; pass pre_tokenizer=<llama.cpp name> "
            f"(known here: {', '.join(PRE_TOKENIZERS)}) if you know which one llama.cpp uses for it"
        )
    return pre


def _n_tokens(data: dict) -> int:
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def add_tokenizer(writer, tokenizer, *, pre: str, vocab: int) -> None:
    """Write vocabulary, merges, token types, special ids and chat template; vocab padded to the
    embedding size with unused placeholder tokens."""
    import gguf

    data = _backend(tokenizer)
    vocab_size = max(_n_tokens(data), vocab)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for tok, i in data["model"]["vocab"].items():
        tokens[i], types[i] = tok, int(gguf.TokenType.NORMAL)
    for t in data.get("added_tokens", []):
        tokens[t["id"]] = t["content"]
        types[t["id"]] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                       ("pad", tokenizer.pad_token_id), ("unk", tokenizer.unk_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(int(value))
    with_specials = tokenizer("a", add_special_tokens=True).input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bos is not None and len(with_specials) > len(plain) and with_specials[0] == bos)
    writer.add_add_eos_token(eos is not None and len(with_specials) > len(plain) and with_specials[-1] == eos)
    writer.add_add_space_prefix(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)

