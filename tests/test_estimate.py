"""`sculpt estimate`: predictions from config.json alone (meta device), against measured peaks."""

import json
import re
import subprocess
import sys

import pytest

from llmsculpt.cli.main import main
from llmsculpt.eval.memory_estimate import estimate, parse_bytes

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
    assert not estimate(d, method="adaptive", dtype="float32", budget=parse_bytes("48GB")).fits


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
