"""`sculpt estimate`: predictions from config.json alone (meta device), against measured peaks."""

import json
import re
import subprocess
import sys

import pytest

from llmsculpt.cli.main import main
from llmsculpt.config import parse_bytes
from llmsculpt.eval.memory_estimate import estimate

LLAMA_31_8B = {  # the published config of meta-llama/Llama-3.1-8B (weights not needed)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "head_dim": 128,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "attention_bias": False,
    "rope_theta": 500000.0, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
QWEN25_7B = {  # Qwen/Qwen2.5-7B
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
    "rope_theta": 1000000.0, "hidden_act": "silu", "torch_dtype": "bfloat16",
}


LLAMA_31_70B = {**LLAMA_31_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                "num_attention_heads": 64}  # meta-llama/Llama-3.1-70B: the 8B's config but these


def _config_dir(tmp_path, name, cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("name, cfg, params", [("llama-3.1-8b", LLAMA_31_8B, 8_030_261_248),
                                               ("qwen2.5-7b", QWEN25_7B, 7_615_616_512)])
def test_8b_class_adaptive_bf16_fits_one_48gb_gpu(tmp_path, capsys, name, cfg, params):
    d = _config_dir(tmp_path, name, cfg)
    assert main(["estimate", "--model", str(d), "--method", "adaptive", "--dtype", "bfloat16", "--n-samples", "10",
                 "--seq-len", "128", "--budget", "48GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"params", "weights_bytes", "peak_bytes", "fits", "breakdown"} <= set(out)
    assert out["params"] == params and out["weights_bytes"] == 2 * params
    assert out["peak_bytes"] < 40e9 and out["fits"]
    assert out["breakdown"]["gradients"] < out["weights_bytes"]  # embeddings and lm_head get no gradient
    assert not estimate(d, method="adaptive", dtype="float32", budget=parse_bytes("32GB")).fits  # weights alone
    # gradients are streamed to scores: one backward holds about one layer's; forcing several backwards
    # (micro-batch 1) adds an fp32 accumulator per scored parameter, so it costs more, not less
    one, several = (estimate(d, method="adaptive", dtype="bfloat16", micro_batch=m) for m in (None, 1))
    assert one.breakdown["gradients"] < 0.1 * one.weights_bytes
    assert several.breakdown["gradients"] > one.breakdown["gradients"] + 3 * params


def test_70b_layer_by_layer_flap_fits_one_80gb_device_and_adaptive_fits_over_eight(tmp_path, capsys):
    d = _config_dir(tmp_path, "llama-3.1-70b", LLAMA_31_70B)
    assert main(["estimate", "--model", str(d), "--method", "flap", "--layer-by-layer", "--device", "cuda",
                 "--budget", "80GB", "--json"]) == 0
    flap = json.loads(capsys.readouterr().out)
    assert flap["params"] == 70_553_706_496 and flap["weights_bytes"] > 140e9  # the whole model: 141 GB
    assert flap["fits"] and flap["peak_bytes"] < 0.15 * flap["weights_bytes"]
    whole = estimate(d, method="flap", dtype="bfloat16", device="cuda", budget=parse_bytes("80GB"))
    assert not whole.fits  # the reason to go layer by layer
    assert main(["estimate", "--model", str(d), "--method", "adaptive", "--devices", "8", "--device", "cuda",
                 "--budget", "80GB", "--json"]) == 0
    sharded = json.loads(capsys.readouterr().out)
    assert sharded["fits"] and sharded["peak_bytes"] <= 80e9
    assert main(["estimate", "--model", str(d), "--method", "adaptive", "--layer-by-layer"]) == 2  # gradients


def test_parse_bytes_and_bad_input(tmp_path):
    assert parse_bytes("48GB") == 48_000_000_000 and parse_bytes("24GiB") == 24 * 2**30
    with pytest.raises(Exception, match="memory size"):
        parse_bytes("lots")
    assert main(["estimate", "--model", "tiny-llama", "--method", "nonsense"]) == 2


def _measured_rss(model: str, method: str) -> int:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "llmsculpt.cli.main", "prune", "--model", model,
           "--method", method, "--ratio", "0.25", "--dtype", "bfloat16", "--dry-run", "--json", "--no-eval"]
    cmd += ["--option", "steps=1"] if method == "adaptive" else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024


def test_estimate_within_25_percent_of_measured_peak_tiny():
    predicted = estimate("tiny-llama", method="adaptive", dtype="bfloat16").peak_bytes
    assert abs(predicted / _measured_rss("tiny-llama", "adaptive") - 1) <= 0.25


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adaptive", "flap"])
def test_estimate_within_25_percent_of_measured_peak_default_model(method):
    predicted = estimate("smollm2-135m", method=method, dtype="bfloat16").peak_bytes
    assert abs(predicted / _measured_rss("smollm2-135m", method) - 1) <= 0.25


TEXT = "The quick brown fox jumps over the lazy dog. Pruning removes whole heads and channels. " * 80


@pytest.mark.slow
def test_training_estimate_within_25_percent_of_measured_peak_default_model(tmp_path):
    """The accel estimate's training phase (bf16 weights, fp32 masters and moments of the model the
    first phase trains, unchecked activations) against a real one-phase accel run's peak RSS."""
    from llmsculpt.eval.memory_estimate import Training

    data = tmp_path / "train.txt"
    data.write_text(TEXT * 5)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "llmsculpt.cli.main", "accel", "--model", "smollm2-135m",
           "--ratio", "0.25", "--phases", "1", "--prune-steps", "1", "--data", str(data), "--batch-size", "4",
           "--seq-len", "128", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    measured = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    predicted = estimate("smollm2-135m", method="adaptive", n_samples=8, seq_len=128,
                         training=Training(4, 128, first_phase_kept=0.75)).peak_bytes
    assert abs(predicted / measured - 1) <= 0.25, (predicted, measured)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading any weights fails: a refusal must come before it."""
    import llmsculpt.api._common as common
    import llmsculpt.models.loading as loading

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the budget was checked")

    monkeypatch.setattr(loading, "load", refuse)
    monkeypatch.setattr(common, "_load", refuse)


@pytest.mark.parametrize("command", ["prune", "accel", "pretrain-prune"])
def test_budget_too_small_is_refused_before_loading(tmp_path, capsys, no_loading, command):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "out"
    argv = {"prune": ["prune", "--calib", str(text), "--n-samples", "4", "--seq-len", "32", "--no-eval"],
            "accel": ["accel", "--data", str(text), "--target-params", "120000", "--seq-len", "32"],
            "pretrain-prune": ["pretrain-prune", "--data", str(text), "--target-params", "120000", "--seq-len", "32"]}
    assert main([*argv[command], "--model", "tiny-llama", "--budget", "100MB", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(r"would need about [\d.]+ GB at its peak .* more than the --budget of 100MB \(0\.1 GB\): ", err)
    assert "lower" in err or "smaller model" in err
    assert not out.exists() and not (tmp_path / "out.ckpt").exists()


def test_generous_budget_runs_with_the_estimates_micro_batch(tmp_path, monkeypatch):
    """A budget that fits runs; one that fits only at a smaller micro-batch gives the engine that one."""
    import llmsculpt
    import llmsculpt.measure as measure
    from llmsculpt.eval.memory_estimate import engine_micro_batch

    seen = []

    class Spy(measure.LocalEngine):
        def __init__(self, **kw):
            seen.append(kw.get("micro_batch"))
            super().__init__(**kw)

    monkeypatch.setattr(measure, "LocalEngine", Spy)
    kw = dict(method="uniform", ratio=0.2, calib_text=TEXT, data={"n_samples": 8, "seq_len": 32}, device="cpu")
    plain = llmsculpt.prune("tiny-llama", **kw)
    with_budget = llmsculpt.prune("tiny-llama", budget="100GB", **kw)
    assert seen[:2] == [None, engine_micro_batch("uniform", 8, 32)] == [None, 8]
    assert with_budget.plan.to_dict() == plain.plan.to_dict()  # one pass over the whole batch either way
    import llmsculpt.eval.memory_estimate as memory_estimate

    # a tiny model's CPU peak is the runtime's at any micro-batch; without it (as on a GPU) the pass decides
    monkeypatch.setattr(memory_estimate, "RUNTIME_CPU", 0)
    monkeypatch.setattr(memory_estimate, "RUNTIME_PASS_CPU", 0)
    tight = estimate("tiny-llama", method="uniform", dtype="float32", n_samples=8, seq_len=32, micro_batch=2)
    llmsculpt.prune("tiny-llama", budget=tight.peak_bytes + 1, **kw)
    assert seen[2] == 2  # 8 and 4 do not fit, 2 does
    with pytest.raises(llmsculpt.SculptError, match="micro-batch 1"):
        llmsculpt.prune("tiny-llama", budget=tight.peak_bytes - 10**7, **kw)


def test_cuda_budget_is_the_free_device_memory(monkeypatch):
    """Without --budget, a CUDA run is held to the device's free memory (no GPU needed to check)."""
    import torch

    import llmsculpt.api._budget as budget
    import llmsculpt.models.placement as placement

    monkeypatch.setattr(placement, "resolve_device", lambda value=None: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**5, 8 * 10**9))
    assert budget.budget_in_force(None, "auto") == (10**5, "the free memory of cuda:0")
    assert budget.budget_in_force("24GB", "auto") == (24 * 10**9, "the --budget of 24GB")
    with pytest.raises(Exception, match=r"more than the free memory of cuda:0 \(0\.0 GB\)"):
        budget.fit_or_refuse("tiny-llama", method="adaptive", dtype="float32", n_samples=4, seq_len=32, budget=None,
                             device="auto", command="this prune")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 10**9, 8 * 10**9))
    assert budget.fit_or_refuse("tiny-llama", method="adaptive", dtype="float32", n_samples=4, seq_len=32,
                                budget=None, device="auto", command="this prune") == 4
