"""Evaluation: multiple-choice scoring (JSONL and BIG-bench), lm-eval wiring on a local task,
speed measurement, and `sculpt eval` with tasks."""

import json

import pytest
import torch
import torch.nn.functional as F

from llmsculpt.errors import SculptError
from llmsculpt.eval.multiple_choice import McExample, McTask, choice_logprobs, load_mc_task, score_mc
from llmsculpt.eval.speed import compare_speed, flops_per_token, measure_speed
from llmsculpt.structures.shapes import count_params
from llmsculpt.testing import tiny_model, tiny_tokenizer

from conftest import SHARED_DATA


def test_choice_logprobs_match_an_independent_computation():
    model, tok = tiny_model(), tiny_tokenizer()
    ctx, choices = "The cat sat on the", [" mat", " hat!"]
    got = choice_logprobs(model, tok, ctx, choices)
    for value, choice in zip(got, choices):
        c = tok(ctx, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([c + tok(choice, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0].float(), -1)
        want = sum(logp[p - 1, ids[0, p]].item() for p in range(len(c), ids.shape[1]))
        assert value == pytest.approx(want, abs=1e-4)


def test_rigged_task_is_solved_and_normalisation_uses_bytes():
    model, tok = tiny_model(), tiny_tokenizer()
    # the correct answer continues a pattern the scorer can only rank by likelihood: compare
    # against the model's own preference, so the label is right by construction
    examples = []
    for q in ["abc", "hello", "xyz", "prune"]:
        lls = choice_logprobs(model, tok, q, [" a", " b"])
        examples.append(McExample(q, [" a", " b"], int(lls[1] > lls[0])))
    res = score_mc(model, tok, McTask("rigged", examples, output_prefix=""))
    assert res.acc == 1.0 and res.n == 4
    flipped = [McExample(e.question, e.choices, 1 - e.label) for e in examples]
    assert score_mc(model, tok, McTask("flipped", flipped, output_prefix="")).acc == 0.0


def test_task_files(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text("\n".join(json.dumps({"context": f"Q{i}?", "choices": [" x", " y", " z"], "label": i % 3}) for i in range(5)))
    task = load_mc_task(good)
    assert len(task.examples) == 5 and task.examples[4].label == 1
    res = score_mc(tiny_model(), tiny_tokenizer(), task, num_fewshot=2, seed=1)
    assert res.n == 5 and 0 <= res.acc <= 1 and res.num_fewshot == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["x", "y"], "label": 5}\n')
    with pytest.raises(SculptError, match="bad.jsonl:1"):
        load_mc_task(bad)
    with pytest.raises(SculptError, match="does not exist"):
        load_mc_task(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"no": "examples"}')
    with pytest.raises(SculptError, match="BIG-bench"):
        load_mc_task(tmp_path / "x.json")


def test_real_bigbench_tasks_load():
    files = sorted((SHARED_DATA / "bigbench").glob("*.json"))
    if not files:
        pytest.skip("shared BIG-bench tasks not available")
    for path in files:
        task = load_mc_task(path)
        assert len(task.examples) > 50
        assert all(0 <= e.label < len(e.choices) for e in task.examples)
    snarks = load_mc_task(SHARED_DATA / "bigbench" / "snarks.json")
    res = score_mc(tiny_model(), tiny_tokenizer(), snarks, limit=3)
    assert res.n == 3


def test_speed_measurement_fields():
    model = tiny_model()
    res = measure_speed(model, batch_sizes=(1, 2), prompt_len=16, new_tokens=4, repeats=1)
    assert res.params == count_params(model)
    assert [p.batch_size for p in res.points] == [1, 2]
    assert all(p.prefill_tokens_per_s > 0 and p.decode_tokens_per_s > 0 for p in res.points)
    assert res.flops_per_token == flops_per_token(model, 16 + 2) > 2 * (count_params(model) - 2 * 128 * 64)
    ratios = compare_speed(res, res)
    assert ratios["params_ratio"] == 1.0 and ratios["decode_speedup_bs1"] == 1.0


def test_eval_cli_with_mc_file(tmp_path, capsys):
    from llmsculpt.cli.main import main

    task = tmp_path / "t.jsonl"
    task.write_text("\n".join(json.dumps({"context": f"Q{i}", "choices": [" a", " b"], "label": 0}) for i in range(3)))
    assert main(["eval", "--model", "tiny-qwen2", "--mc-file", str(task), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"]["t"]["n"] == 3
