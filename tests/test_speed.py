"""Speed and memory measurement on a tiny model: fields positive and consistent, the FLOPs formula,
ratios against a baseline, and `sculpt bench-speed`."""

import json

import pytest

from llmsculpt.eval.speed import compare_speed, flops_per_token, matmul_params, measure_speed
from llmsculpt.structures.shapes import count_params
from llmsculpt.testing import tiny_model


def test_measure_speed_fields_are_positive_and_consistent():
    model = tiny_model()
    res = measure_speed(model, batch_sizes=(1, 2), prompt_len=16, new_tokens=4, repeats=1)
    assert res.params == count_params(model) == sum(p.numel() for p in model.parameters())
    tensors = [*model.parameters(), *model.buffers()]  # buffers: the rotary frequencies
    assert res.weights_mb == pytest.approx(sum(t.numel() * t.element_size() for t in tensors) / 2**20)
    assert [p.batch_size for p in res.points] == [1, 2]
    for p in res.points:
        assert p.prefill_tokens_per_s > 0 and p.decode_tokens_per_s > 0 and p.peak_extra_mb >= 0
    assert res.peak_memory_mb == pytest.approx(res.weights_mb + max(p.peak_extra_mb for p in res.points))
    assert (res.device, res.prompt_len, res.new_tokens, res.flops_context) == ("cpu", 16, 4, 18.0)
    assert json.loads(json.dumps(res.to_dict()))["points"][1]["batch_size"] == 2
    assert not model.training


def test_flops_formula_on_a_known_shape():
    model = tiny_model("tiny-llama")  # hidden 64, head_dim 16, 4 heads / 2 KV, MLP 96, 4 layers, vocab 128
    per_layer = 64 * 16 * (2 * 4 + 2 * 2) + 3 * 64 * 96
    assert matmul_params(model) == 4 * per_layer + 128 * 64
    # non-embedding matmul params = all params minus the embedding and the norms
    norms = 4 * 2 * 64 + 64
    assert matmul_params(model) == count_params(model) - 128 * 64 - norms
    assert flops_per_token(model, 100) == 2 * matmul_params(model) + 4 * 4 * (4 * 16) * 100
    # a tied LM head still costs its matmul
    assert matmul_params(tiny_model("tiny-llama-tied")) == matmul_params(model)


def test_compare_speed_against_a_smaller_model():
    kw = dict(batch_sizes=(1,), prompt_len=8, new_tokens=2, repeats=1)
    big = measure_speed(tiny_model(), **kw)
    small = measure_speed(tiny_model(num_hidden_layers=2), **kw)
    ratios = compare_speed(small, big)
    assert ratios["params_ratio"] == small.params / big.params < 1
    assert 0.4 < ratios["flops_ratio"] < 0.7
    assert ratios["decode_speedup_bs1"] > 0 and "decode_speedup_bs8" not in ratios
    same = compare_speed(big, big)
    assert same["params_ratio"] == same["prefill_speedup_bs1"] == same["decode_speedup_bs1"] == 1.0


def test_bench_speed_cli(capsys):
    from llmsculpt.cli.main import main

    argv = ["bench-speed", "--model", "tiny-qwen2", "--baseline", "tiny-llama", "--batch-sizes", "1,2",
            "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["batch_size"] for p in out["model"]["points"]] == [1, 2]
    assert {"params_ratio", "decode_speedup_bs2"} <= out["ratios"].keys()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "decode" in text and "params_ratio" in text and "decode_speedup_bs2" in text
    assert main(["bench-speed", "--model", "tiny-llama", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
