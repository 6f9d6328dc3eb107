"""Offline multiple-choice scoring of local tasks: log-likelihood of each choice given the prompt.

Formats:

* JSONL, one record per line: ``{"context": str, "choices": [str, ...], "label": int}``. The choice
  is appended to the context verbatim, so put the separating space in the choices (``" Paris"``) or
  at the end of the context (trailing whitespace of a context is scored with the choice, as lm-eval
  does, so ``"...capital of France is "`` + ``"Paris"`` tokenises like ``" Paris"``).
* BIG-bench JSON tasks: ``examples`` with ``input`` and ``target_scores`` (choice -> score; the
  highest-scoring choice is the answer). The task-level ``task_prefix``, ``example_input_prefix``,
  ``example_output_prefix``, ``choice_prefix``, ``append_choices_to_input`` and
  ``few_shot_example_separator`` are honoured with BIG-bench's defaults (``"\\nQ: "``, ``"\\nA: "``,
  ``"\\n  choice: "``, True, ``"\\n"``). Appended choices keep the file's order (BIG-bench shuffles).

Metrics: ``acc`` ranks choices by summed log-likelihood; ``acc_norm`` by log-likelihood per UTF-8
byte of the choice's text (leading whitespace excluded, as lm-eval excludes its target delimiter; for
ASCII choices this equals lm-eval's ``acc_norm``, which divides by characters). k-shot prompts
prepend ``num_fewshot`` other examples of the same task, with their answers, drawn by a seeded RNG
per example, so a result does not depend on ``limit`` or ``batch_size``.

Example:
    >>> task = load_mc_task("snarks.json")                        # doctest: +SKIP
    >>> score_mc(model, tokenizer, task, num_fewshot=3, limit=100)  # doctest: +SKIP
    McResult(task='snarks', acc=0.55, acc_norm=0.54, n=100, num_fewshot=3)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmsculpt.errors import SculptError
from llmsculpt.io.files import iter_jsonl, read_text


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
    output_prefix: str = ""
    choice_prefix: str = ""
    append_choices: bool = False
    separator: str = "\n\n"

    def prompt(self, ex: McExample) -> str:
        """The text the choices of ``ex`` continue (without task prefix and shots)."""
        text = self.input_prefix + ex.question
        if self.append_choices:
            text += "".join(self.choice_prefix + c for c in ex.choices)
        return text + self.output_prefix

    def context(self, ex: McExample, shots: list[McExample] = ()) -> str:
        solved = "".join(self.prompt(s) + s.choices[s.label] + self.separator for s in shots)
        return self.task_prefix + solved + self.prompt(ex)


@dataclass
class McResult:
    task: str
    acc: float
    acc_norm: float
    n: int
    num_fewshot: int

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------- files


def _load_bigbench(path: Path, data: dict) -> McTask:
    examples = []
    for n, ex in enumerate(data["examples"]):
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or not isinstance(ex.get("input"), str):
            hint = " (a generative 'target' task; only multiple choice is supported)" if "target" in ex else ""
            raise SculptError(f"{path}: example {n} needs a string 'input' and a 'target_scores' mapping{hint}")
        if len(scores) < 2 or not all(isinstance(v, (int, float)) for v in scores.values()):
            raise SculptError(f"{path}: example {n}: 'target_scores' must map at least 2 choices to numbers")
        choices = [str(c) for c in scores]
        values = list(scores.values())
        examples.append(McExample(ex["input"], choices, values.index(max(values))))
    return McTask(
        name=str(data.get("name") or path.stem),
        examples=examples,
        task_prefix=data.get("task_prefix", ""),
        input_prefix=data.get("example_input_prefix", "\nQ: "),
        output_prefix=data.get("example_output_prefix", "\nA: "),
        choice_prefix=data.get("choice_prefix", "\n  choice: "),
        append_choices=bool(data.get("append_choices_to_input", True)),
        separator=data.get("few_shot_example_separator", "\n"),
    )


def _record(path: Path, where: str, rec: object) -> McExample:
    expected = 'expected {"context": str, "choices": [str, str, ...], "label": int}'
    if not isinstance(rec, dict) or not {"context", "choices", "label"} <= rec.keys():
        raise SculptError(f"{path}:{where}: {expected}")
    choices, label = rec["choices"], rec["label"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise SculptError(f"{path}:{where}: 'choices' must be a list of at least 2 strings; {expected}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise SculptError(f"{path}:{where}: label {label!r} does not index the {len(choices)} choices")
    return McExample(str(rec["context"]), choices, label)


def _load_jsonl(path: Path) -> McTask:
    examples = [_record(path, str(n), rec) for n, rec in iter_jsonl(path, what="task file")]
    return McTask(name=path.stem, examples=examples)


def load_mc_task(path: str | Path) -> McTask:
    """Read a multiple-choice task: JSONL records, a JSON list of such records, or a BIG-bench task.

    Raises SculptError, naming the file (and line or example), when the file is malformed.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        task = _load_jsonl(path)
    else:
        text = read_text(path, what="task file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SculptError(f"{path} is not valid JSON ({exc}); JSONL tasks need the .jsonl suffix") from None
        if isinstance(data, list):
            task = McTask(name=path.stem, examples=[_record(path, f"record {i}", r) for i, r in enumerate(data)])
        elif isinstance(data, dict) and isinstance(data.get("examples"), list):
            task = _load_bigbench(path, data)
        else:
            raise SculptError(f"{path}: not a BIG-bench task (no 'examples' list) nor a list of records")
    if not task.examples:
        raise SculptError(f"{path}: the task has no examples")
    return task


# ----------------------------------------------------------------------------------- scoring


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as they appear in the tokenisation of the whole text.

    Trailing whitespace of the context moves to the continuation (BPE tokenisers attach spaces to
    the following word). The whole text is tokenised once and split after the longest prefix it
    shares with the context's own tokenisation, so the scored tokens are exactly the tokens the
    model would see, even if a token straddles the boundary. An empty context is replaced by the
    BOS (or EOS) token, which the model then conditions on.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix if prefix is not None else 0], tokenizer.encode(continuation, add_special_tokens=False)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    k = 0
    while k < min(len(ctx), len(whole)) and ctx[k] == whole[k]:
        k += 1
    if k == 0 or k == len(whole):  # no shared prefix, or the choice vanished into it: score apart
        return ctx, tokenizer.encode(continuation, add_special_tokens=False)
    return whole[:k], whole[k:]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _score_rows(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    """Sum log p(target) for right-padded rows of (input ids, target ids of the last positions)."""
    device = _device(model)
    width = max(len(inp) for inp, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    rr, cc, targets, owner = [], [], [], []
    for i, (inp, tgt) in enumerate(rows):
        ids[i, : len(inp)] = torch.tensor(inp)
        mask[i, : len(inp)] = 1
        rr += [i] * len(tgt)
        cc += range(len(inp) - len(tgt), len(inp))
        targets += tgt
        owner += [i] * len(tgt)
    ids, mask = ids.to(device), mask.to(device)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rr_t, cc_t = torch.tensor(rr, device=device), torch.tensor(cc, device=device)
    if decoder not in (None, model) and head is not None:  # project only positions that predict a choice token
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = head(hidden[rr_t, cc_t])
    else:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rr_t, cc_t]
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
    sums.index_add_(0, torch.tensor(owner, device=device), logp.double())
    return sums.tolist()


def loglikelihoods(
    model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int = 8, max_len: int | None = None
) -> list[float]:
    """Sum of log p(continuation | context) for each (context, continuation) request.

    Requests are sorted by length and run ``batch_size`` at a time, right-padded (positions stay
    0..n-1, so scores equal those of unpadded runs). Contexts longer than ``max_len`` (default: the
    model's ``max_position_embeddings``) lose their oldest tokens.
    """
    if batch_size < 1:
        raise SculptError(f"batch_size must be positive, got {batch_size}")
    max_len = max_len or getattr(model.config, "max_position_embeddings", None) or 2048
    rows = []
    for context, continuation in requests:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise SculptError(f"choice {continuation!r} encodes to no tokens; choices must be non-empty text")
        full = (ctx + cont)[-(max_len + 1):]
        rows.append((full[:-1], cont[-(len(full) - 1):]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out = [0.0] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, value in zip(chunk, _score_rows(model, [rows[i] for i in chunk], pad_id)):
                out[i] = value
    finally:
        model.train(was_training)
    return out


def choice_logprobs(model, tokenizer, context: str, choices: list[str], *, max_len: int | None = None) -> list[float]:
    """Sum of log p(choice | context) for each choice, in one batch."""
    return loglikelihoods(model, tokenizer, [(context, c) for c in choices], batch_size=len(choices), max_len=max_len)


def _shots(task: McTask, idx: int, k: int, seed: int) -> list[McExample]:
    """``k`` examples other than ``idx``, from an RNG seeded by (seed, idx)."""
    picks = random.Random(seed * 1_000_003 + idx).sample(range(len(task.examples) - 1), k)
    return [task.examples[j + (j >= idx)] for j in picks]


def score_mc(
    model, tokenizer, task: McTask, *, num_fewshot: int = 0, seed: int = 0, limit: int | None = None,
    batch_size: int = 8,
) -> McResult:
    """Accuracy and byte-length-normalised accuracy of ``model`` on the first ``limit`` examples of ``task``."""
    if num_fewshot < 0 or (limit is not None and limit < 1):
        raise SculptError(f"num_fewshot must be >= 0 and limit >= 1, got {num_fewshot} and {limit}")
    if num_fewshot >= len(task.examples):
        raise SculptError(
            f"task {task.name!r} has {len(task.examples)} examples, too few for {num_fewshot}-shot prompts"
        )
    examples = task.examples[:limit] if limit is not None else task.examples
    requests, spans = [], []
    for idx, ex in enumerate(examples):
        context = task.context(ex, _shots(task, idx, num_fewshot, seed) if num_fewshot else [])
        spans.append((len(requests), len(ex.choices)))
        requests += [(context, c) for c in ex.choices]
    lls = loglikelihoods(model, tokenizer, requests, batch_size=batch_size)
    hits = hits_norm = 0
    for ex, (start, n) in zip(examples, spans):
        ll = lls[start : start + n]
        norm = [v / max(1, len(c.lstrip().encode("utf-8"))) for v, c in zip(ll, ex.choices)]
        hits += max(range(n), key=ll.__getitem__) == ex.label
        hits_norm += max(range(n), key=norm.__getitem__) == ex.label
    n = len(examples)
    return McResult(task=task.name, acc=hits / n, acc_norm=hits_norm / n, n=n, num_fewshot=num_fewshot)
