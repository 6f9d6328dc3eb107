"""lm-eval adapter: per-request log-likelihoods agree with lm-eval's HFLM, a local task (json
dataset through include_path) gives the same acc/acc_norm as our offline scorer, errors are clear."""

import json

import pytest

from llmsculpt.errors import SculptError
from llmsculpt.eval.lm_eval_adapter import PAPER_METRIC, paper_metric
from llmsculpt.eval.multiple_choice import McExample, McTask, loglikelihoods, score_mc
from llmsculpt.testing import tiny_model
from llmsculpt.testing.tiny import tiny_bpe_tokenizer

QUESTIONS = ["Is the fox quick?", "Does the dog sleep?", "Pruning removes heads?", "Is the fox brown?",
             "Jumps over what?", "Is the dog lazy?"]
CHOICES = ["yes", "no", "the lazy dog", "channels and heads"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = tiny_bpe_tokenizer()
    return tiny_model("tiny-llama", vocab_size=len(tok)), tok


def test_paper_metric_choice():
    assert paper_metric("arc_easy", {"acc": 0.5, "acc_norm": 0.6}) == PAPER_METRIC["arc_easy"] == "acc_norm"
    assert paper_metric("boolq", {"acc": 0.5, "acc_norm": 0.6}) == "acc"
    assert paper_metric("my_local", {"acc": 0.5, "acc_norm": 0.6}) == "acc_norm"
    assert paper_metric("my_local", {"exact_match": 0.1}) == "exact_match"


def test_loglikelihoods_agree_with_lm_eval_hflm(model_and_tokenizer):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tokenizer
    requests = [(q, " " + c) for q in QUESTIONS[:3] for c in CHOICES] + [("The quick brown ", "fox"), ("", "The dog")]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    theirs = [ll for ll, _ in lm.loglikelihood(
        [Instance("loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)], disable_tqdm=True)]
    assert loglikelihoods(model, tok, requests, batch_size=3) == pytest.approx(theirs, abs=1e-4)


def test_run_lm_eval_on_a_local_task_matches_the_offline_scorer(tmp_path, model_and_tokenizer):
    pytest.importorskip("lm_eval")
    from llmsculpt.eval.lm_eval_adapter import run_lm_eval

    model, tok = model_and_tokenizer
    docs = [{"context": q, "choices": CHOICES, "label": i % len(CHOICES)} for i, q in enumerate(QUESTIONS)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs))
    (tmp_path / "local_mc.yaml").write_text(
        f"task: local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    out = run_lm_eval(model, tok, ["local_mc"], include_path=str(tmp_path), batch_size=4, limit=5)
    # lm-eval joins context and choice with its target delimiter " "; our JSONL choices carry it
    ours = score_mc(model, tok, McTask("local", [McExample(d["context"], [" " + c for c in d["choices"]], d["label"])
                                                 for d in docs]), limit=5)
    assert out == {"local_mc": {"acc_norm": pytest.approx(ours.acc_norm)}}
    # (an unknown name is checked against lm-eval's full index, ~15 s to build: not tested here)
    with pytest.raises(SculptError, match="no lm-eval task"):
        run_lm_eval(model, tok, [" "], include_path=str(tmp_path))
