"""Offline multiple-choice scoring of local tasks: log-likelihood of each choice given the prompt.

Formats: JSONL records ``{"context", "choices", "label"}`` and BIG-bench JSON tasks (``examples``
with ``input`` and ``target_scores``; the task's ``task_prefix``, ``example_input_prefix``,
``example_output_prefix``, ``choice_prefix``, ``append_choices_to_input`` and
``few_shot_example_separator`` are honoured with BIG-bench's defaults). Reports ``acc`` (highest
summed log-likelihood) and ``acc_norm`` (log-likelihood per byte of the choice, as lm-eval does).
k-shot prompts draw other examples of the same task with a fixed seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmsculpt.errors import SculptError


@dataclass
class McExample:
    question: str  # the example's input, without task-level prefixes
    choices: list[str]
    label: int


@dataclass
class McTask:
    name: str
    examples: list[McExample]
    task_prefix: str = ""
    input_prefix: str = ""
    output_prefix: str = " "
    choice_prefix: str = ""
    append_choices: bool = False
    separator: str = "\n\n"

    def prompt(self, ex: McExample) -> str:
        text = self.input_prefix + ex.question
        if self.append_choices:
            text += "".join(self.choice_prefix + c for c in ex.choices)
        return text + self.output_prefix


@dataclass
class McResult:
    task: str
    acc: float
    acc_norm: float
    n: int
    num_fewshot: int


def _load_bigbench(path: Path, data: dict) -> McTask:
    examples = []
    for n, ex in enumerate(data["examples"]):
        scores = ex.get("target_scores")
        if not isinstance(scores, dict) or not scores or "input" not in ex:
            raise SculptError(f"{path}: example {n} has no 'input' and 'target_scores'")
        choices = list(scores)
        best = max(scores.values())
        examples.append(McExample(ex["input"], choices, [scores[c] for c in choices].index(best)))
    return McTask(
        name=data.get("name", path.stem),
        examples=examples,
        task_prefix=data.get("task_prefix", ""),
        input_prefix=data.get("example_input_prefix", "\nQ: "),
        output_prefix=data.get("example_output_prefix", "\nA: "),
        choice_prefix=data.get("choice_prefix", "\n  choice: "),
        append_choices=bool(data.get("append_choices_to_input", True)),
        separator=data.get("few_shot_example_separator", "\n"),
    )


def _load_jsonl(path: Path) -> McTask:
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ex = McExample(str(rec["context"]), [str(c) for c in rec["choices"]], int(rec["label"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SculptError(f"{path}:{n}: expected {{\"context\", \"choices\", \"label\"}} ({exc})") from None
        if not 0 <= ex.label < len(ex.choices) or len(ex.choices) < 2:
            raise SculptError(f"{path}:{n}: label {ex.label} does not index {len(ex.choices)} choices")
        examples.append(ex)
    return McTask(name=path.stem, examples=examples, output_prefix="")


def load_mc_task(path: str | Path) -> McTask:
    """Read a JSONL or BIG-bench JSON multiple-choice task."""
    path = Path(path)
    if not path.is_file():
        raise SculptError(f"task file {path} does not exist")
    if path.suffix == ".jsonl":
        task = _load_jsonl(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SculptError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
            raise SculptError(f"{path}: not a BIG-bench task (no 'examples' list)")
        task = _load_bigbench(path, data)
    if not task.examples:
        raise SculptError(f"{path}: the task has no examples")
    return task


@torch.no_grad()
def choice_logprobs(model, tokenizer, context: str, choices: list[str], *, max_len: int | None = None) -> list[float]:
    """Sum of log p(choice tokens | context) for each choice (context tokenised once, left-cut to fit)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and not ctx else []
    rows, spans = [], []
    for choice in choices:
        cont = tokenizer(choice, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id or 0]
        ids = bos + ctx + cont
        if max_len and len(ids) > max_len:
            ids = ids[-max_len:]
        rows.append(ids)
        spans.append(len(cont))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    device = next(model.parameters()).device
    hidden = model.model(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    out = []
    for i, (r, n) in enumerate(zip(rows, spans)):
        positions = torch.arange(len(r) - n - 1, len(r) - 1, device=device)
        logits = model.lm_head(hidden[i, positions]).float()  # only where a choice token is predicted
        targets = torch.tensor(r[len(r) - n :], device=device)
        out.append(F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum().item())
    return out


def score_mc(model, tokenizer, task: McTask, *, num_fewshot: int = 0, seed: int = 0, limit: int | None = None) -> McResult:
    """Accuracy and byte-length-normalised accuracy of ``model`` on ``task``."""
    rng = random.Random(seed)
    examples = task.examples[:limit] if limit else task.examples
    max_len = getattr(model.config, "max_position_embeddings", None)
    hits = hits_norm = 0
    was_training = model.training
    model.eval()
    try:
        for idx, ex in enumerate(examples):
            shots = ""
            if num_fewshot:
                pool = [e for j, e in enumerate(task.examples) if j != idx]
                picked = rng.sample(pool, min(num_fewshot, len(pool)))
                shots = "".join(task.prompt(e) + e.choices[e.label] + task.separator for e in picked)
            context = task.task_prefix + shots + task.prompt(ex)
            lls = choice_logprobs(model, tokenizer, context, ex.choices, max_len=max_len)
            norm = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(lls, ex.choices)]
            hits += int(max(range(len(lls)), key=lls.__getitem__) == ex.label)
            hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == ex.label)
    finally:
        model.train(was_training)
    n = len(examples)
    return McResult(task=task.name, acc=hits / n, acc_norm=hits_norm / n, n=n, num_fewshot=num_fewshot)
