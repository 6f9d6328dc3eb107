"""Training data: plain text (tokenised and packed), instruction JSONL (alpaca) and chat JSONL
(``messages`` rendered with the tokenizer's chat template). For instruction and chat data the
prompt tokens are masked out of the loss (label −100)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llmsculpt.errors import SculptError

FORMATS = ("text", "alpaca", "chat")
IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def _records(path: Path, skip_bad: bool) -> tuple[list[tuple[int, dict]], int]:
    out, bad = [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if skip_bad:
                bad += 1
                continue
            raise SculptError(f"{path}:{n}: bad record ({exc}); fix it or pass --skip-bad") from None
        out.append((n, rec))
    return out, bad


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
        text = path.read_text(encoding="utf-8")
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
        out.append(Example(ex.input_ids[:seq_len], ex.labels[:seq_len]))
    if not out:
        raise SculptError(f"{path}: no usable records")
    return out, bad


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
