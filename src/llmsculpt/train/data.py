"""Training data: plain text (tokenised and packed), instruction JSONL (alpaca) and chat JSONL
(``messages`` rendered with the tokenizer's chat template). For instruction and chat data the
prompt tokens are masked out of the loss (label −100)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmsculpt.errors import SculptError
from llmsculpt.io.files import iter_jsonl, read_text

FORMATS = ("text", "alpaca", "chat")
IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def _records(path: Path, skip_bad: bool) -> tuple[list[tuple[int, dict]], int]:
    bad: list[int] = []
    hint = "; fix it or pass --skip-bad"
    records = list(iter_jsonl(path, what="training data", skip_bad=skip_bad, bad=bad, hint=hint))
    return records, len(bad)


def _alpaca(tokenizer, rec: dict, path: Path, n: int) -> Example:
    if "instruction" not in rec or "output" not in rec:
        raise SculptError(f"{path}:{n}: alpaca records need 'instruction' and 'output'")
    prompt = f"### Instruction:\n{rec['instruction']}\n\n"
    if rec.get("input"):
        prompt += f"### Input:\n{rec['input']}\n\n"
    prompt += "### Response:\n"
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(str(rec["output"]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(p + a, [IGNORE] * len(p) + a)


def _chat(tokenizer, rec: dict, path: Path, n: int) -> Example:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise SculptError(f"{path}:{n}: chat records need 'messages': [{{role, content}}, ...]")
    if msgs[-1]["role"] != "assistant":
        raise SculptError(f"{path}:{n}: the last message must be the assistant's (the trained answer)")
    if not getattr(tokenizer, "chat_template", None):
        raise SculptError("the tokenizer has no chat template; use --format alpaca or text")
    full = tokenizer.apply_chat_template(msgs, tokenize=True)
    prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)
    full, prompt = list(_ids(full)), list(_ids(prompt))
    k = len(prompt) if full[: len(prompt)] == prompt else 0
    return Example(full, [IGNORE] * k + full[k:])


def _ids(out):
    return out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out


def load_examples(path: str | Path, tokenizer, *, fmt: str = "text", seq_len: int = 256, skip_bad: bool = False) -> tuple[list[Example], int]:
    """Examples of at most ``seq_len`` tokens and the number of skipped bad records."""
    path = Path(path)
    if fmt not in FORMATS:
        raise SculptError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not path.is_file():
        raise SculptError(f"training data {path} does not exist")
    if fmt == "text":
        text = read_text(path, what="training text")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids) // seq_len
        if n == 0:
            raise SculptError(f"training text {path} has {len(ids)} tokens, fewer than one block of {seq_len}")
        return [Example(ids[i * seq_len : (i + 1) * seq_len], ids[i * seq_len : (i + 1) * seq_len]) for i in range(n)], 0
    records, bad = _records(path, skip_bad)
    make = _alpaca if fmt == "alpaca" else _chat
    out = []
    for n, rec in records:
        try:
            ex = make(tokenizer, rec, path, n)
        except SculptError:
            if skip_bad:
                bad += 1
                continue
            raise
        out.append(ex)
    if not out:
        raise SculptError(f"{path}: no usable records")
    return check_labels(out, path=path, seq_len=seq_len), bad


def check_labels(examples: list[Example], *, path: str | Path, seq_len: int) -> list[Example]:
    """The examples cut to ``seq_len`` tokens, without those left with no label token to learn from
    (the prompt fills the window: they would add nothing, and a batch of them a NaN loss).

    Refuses (SculptError) when none is left; warns on stderr, one line, when some are dropped.
    """
    import sys

    def first_label(e: Example) -> int | None:  # the loss predicts position t from t-1: t >= 1
        return next((t for t in range(1, len(e.labels)) if e.labels[t] != IGNORE), None)

    firsts = [first_label(e) for e in examples]
    kept = [Example(e.input_ids[:seq_len], e.labels[:seq_len]) for e, t in zip(examples, firsts)
            if t is not None and t < seq_len]
    lost = len(examples) - len(kept)
    if not kept:
        shortest = min((t for t in firsts if t is not None), default=None)
        if shortest is None:
            raise SculptError(f"{path}: none of the {len(examples)} records has a label token to train on")
        raise SculptError(f"{path}: {lost} of {len(examples)} records have no label tokens left at --seq-len "
                          f"{seq_len} (the shortest prompt is {shortest} tokens); raise --seq-len to at least "
                          f"{shortest + 1} or shorten the prompts")
    if lost:
        print(f"warning: {path}: {lost} of {len(examples)} records have no label tokens left at --seq-len {seq_len} "
              f"(the prompt fills it); dropped them, training on the other {len(kept)}", file=sys.stderr)
    return kept


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
