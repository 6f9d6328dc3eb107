"""Offline multiple-choice scoring: log-likelihoods equal an independent computation, the
context/continuation boundary, rigged tasks with a known answer, k-shot prompts, task files
(JSONL and the real BIG-bench files) and the errors for malformed ones."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.eval.multiple_choice import (
    McExample,
    McTask,
    _shots,
    encode_pair,
    load_mc_task,
    loglikelihoods,
    score_mc,
)
from llmsculpt.testing import tiny_model, tiny_tokenizer
from llmsculpt.testing.tiny import tiny_bpe_tokenizer

BIGBENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bigbench"


def _reference_ll(model, ctx_ids: list[int], cont_ids: list[int]) -> float:
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[p - 1, ids[0, p]].item() for p in range(len(ctx_ids), ids.shape[1]))


@pytest.mark.parametrize("bpe", [False, True])
def test_loglikelihoods_equal_an_unpadded_full_logits_computation(bpe):
    tok = tiny_bpe_tokenizer() if bpe else tiny_tokenizer()
    model = tiny_model("tiny-qwen2", vocab_size=len(tok))
    requests = [("The quick brown fox", " jumps"), ("The lazy dog. Pruning removes", " heads and channels."),
                ("Q: fox?\nA:", " The quick brown fox jumps over the lazy dog"), ("", "The dog")]
    got = loglikelihoods(model, tok, requests, batch_size=3)  # mixed lengths: right padding is exercised
    for value, (ctx, cont) in zip(got, requests):
        c_ids, k_ids = encode_pair(tok, ctx, cont)
        if ctx:  # independent tokenisation: the context alone, then the continuation alone
            assert c_ids == tok.encode(ctx) and k_ids == tok.encode(cont, add_special_tokens=False)
        else:
            assert c_ids == [tok.bos_token_id]
        assert value == pytest.approx(_reference_ll(model, c_ids, k_ids), abs=1e-4)
    assert loglikelihoods(model, tok, requests, batch_size=1) == pytest.approx(got, abs=1e-4)


def test_trailing_space_of_the_context_is_scored_with_the_choice():
    tok = tiny_bpe_tokenizer()
    ctx, cont = encode_pair(tok, "The quick brown ", "fox")
    assert ctx == tok.encode("The quick brown") and cont == tok.encode(" fox")
    assert tok.decode(ctx + cont) == "The quick brown fox"


class _FixedNextToken(nn.Module):
    """A "model" whose next-token distribution ignores the input: p(favourite) = 1/2, rest uniform."""

    def __init__(self, favourite: int, vocab: int = 128):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=512, vocab_size=vocab)
        self.dummy = nn.Parameter(torch.zeros(1))
        logits = torch.full((vocab,), math.log(0.5 / (vocab - 1)))
        logits[favourite] = math.log(0.5)
        self.register_buffer("row", logits)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1))


def test_rigged_task_has_a_known_answer_and_norm_uses_bytes():
    tok = tiny_tokenizer()
    model = _FixedNextToken(tok.convert_tokens_to_ids("a"))
    # "b": ll = log(0.5/127) ≈ -5.5 (best sum); "aaaaaaaaaa": ll = 10·log(0.5) ≈ -6.9 but -0.69 per byte
    examples = [McExample(f"Question {i}:", [" b", " aaaaaaaaaa"], 1) for i in range(4)]
    res = score_mc(model, tok, McTask("rigged", examples))
    assert (res.acc, res.acc_norm, res.n) == (0.0, 1.0, 4)
    # a choice made of the favoured token wins both; a wrong label loses both
    mixed = [McExample("x", [" zzz", "aaa", " qqq"], 1), McExample("y", ["aaa", " zzz"], 1)]
    res = score_mc(model, tok, McTask("mixed", mixed), batch_size=2)
    assert (res.acc, res.acc_norm) == (0.5, 0.5)


def test_fewshot_prompts_are_seeded_and_exclude_the_scored_example():
    task = McTask("t", [McExample(f"q{i}", [" a", " b"], i % 2) for i in range(10)], separator="\n")
    for idx in range(10):
        shots = _shots(task, idx, 3, seed=7)
        assert len(shots) == 3 and task.examples[idx] not in shots and len({id(s) for s in shots}) == 3
        assert shots == _shots(task, idx, 3, seed=7)
    assert any(_shots(task, i, 3, seed=7) != _shots(task, i, 3, seed=8) for i in range(10))
    assert task.context(task.examples[0], task.examples[1:3]) == "q1 b\nq2 a\nq0"
    model, tok = tiny_model(), tiny_tokenizer()
    one_by_one = score_mc(model, tok, task, num_fewshot=2, seed=3, limit=6, batch_size=1)
    assert one_by_one == score_mc(model, tok, task, num_fewshot=2, seed=3, limit=6, batch_size=8)
    with pytest.raises(SculptError, match="too few"):
        score_mc(model, tok, task, num_fewshot=10)


def test_jsonl_and_json_list_tasks(tmp_path):
    records = [{"context": f"Q{i}?", "choices": [" x", " y", " z"], "label": i % 3} for i in range(5)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "t2.json").write_text(json.dumps(records))
    for name in ("t.jsonl", "t2.json"):
        task = load_mc_task(tmp_path / name)
        assert len(task.examples) == 5 and task.examples[4].label == 1 and task.examples[0].choices == [" x", " y", " z"]
    res = score_mc(tiny_model(), tiny_tokenizer(), task, num_fewshot=2, seed=1, batch_size=4)
    assert res.n == 5 and 0 <= res.acc <= 1 and res.num_fewshot == 2 and res.task == "t2"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"context": "a", "choices": ["x", "y"], "label": 5}\n', r"bad.jsonl:1: label 5"),
        ("bad.jsonl", '{"context": "a", "choices": ["x", "y"], "label": 0}\n{"context": "a", "choices": "xy", "label": 0}',
         r"bad.jsonl:2: 'choices' must be a list"),
        ("bad.jsonl", '{"context": "a", "choices": ["x", "y"]', r"bad.jsonl:1: not valid JSON"),
        ("bad.jsonl", '{"question": "a"}', r"bad.jsonl:1: expected"),
        ("empty.jsonl", "\n", "no examples"),
        ("x.json", '{"no": "examples"}', "not a BIG-bench task"),
        ("x.json", "{not json", "not valid JSON"),
        ("gen.json", '{"examples": [{"input": "2+2", "target": "4"}]}', "example 0 .*generative"),
        ("one.json", '{"examples": [{"input": "2+2", "target_scores": {"4": 1}}]}', "at least 2 choices"),
    ],
)
def test_malformed_task_files_say_where_and_what(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(SculptError, match=message):
        load_mc_task(tmp_path / name)


def test_missing_task_file():
    with pytest.raises(SculptError, match="does not exist"):
        load_mc_task("/nonexistent/task.jsonl")


def test_real_bigbench_tasks_load_and_score():
    files = sorted(BIGBENCH.glob("*.json"))
    if not files:
        pytest.skip(f"shared BIG-bench tasks not found in {BIGBENCH}")
    for path in files:
        raw = json.loads(path.read_text())
        task = load_mc_task(path)
        assert len(task.examples) == len(raw["examples"]) > 50
        for ex, r in zip(task.examples, raw["examples"]):
            assert r["target_scores"][ex.choices[ex.label]] == max(r["target_scores"].values())
        assert task.task_prefix == raw.get("task_prefix", "")
    sports = load_mc_task(BIGBENCH / "sports_understanding.json")
    ex = sports.examples[0]
    assert sports.context(ex) == (
        "Determine whether the following statement or statements are plausible or implausible:"
        f"\nStatement: {ex.question}\nPlausible/implausible? "
    )
    snarks = load_mc_task(BIGBENCH / "snarks.json")  # BIG-bench defaults, choices not appended
    assert snarks.context(snarks.examples[0]) == f"\nQ: {snarks.examples[0].question}\nA: "
    physics = load_mc_task(BIGBENCH / "physical_intuition.json")  # choices appended with the default prefix
    assert "\n  choice: " + physics.examples[0].choices[0] in physics.context(physics.examples[0])
    model, tok = tiny_model(), tiny_tokenizer()
    res = score_mc(model, tok, snarks, num_fewshot=1, limit=3)
    assert (res.task, res.n, res.num_fewshot) == ("snarks", 3, 1)
