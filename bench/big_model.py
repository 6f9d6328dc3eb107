"""Layer-by-layer pruning of a model that does not fit: a Llama-3.1-8B-shaped checkpoint on a small machine.

Writes (once, to ``--cache``) a checkpoint with Llama-3.1-8B's published config and random BF16
weights as sharded safetensors, one shard per decoder layer (about 16 GB on disk), generated one
layer at a time so the writer never holds the model either; the tokenizer is the default model's
(its ids are valid for any larger vocabulary). Then runs, each in its own process measured from
outside with ``/usr/bin/time -v``:

- ``sculpt estimate --layer-by-layer`` (the prediction, config only);
- ``sculpt prune --method M --ratio R --layer-by-layer --dtype bfloat16 --out OUT`` (the real prune,
  saved), reporting peak RSS, wall time and the prediction's error;
- optionally (``--whole``) the same prune without ``--layer-by-layer`` — on a 24 GB machine the 8B
  shape cannot load whole, which is the point.

    nice -n 5 python bench/big_model.py [--shape llama8b|qwen05b] [--methods flap] [--ratio 0.2]
        [--cache ~/.cache/llmsculpt/bench] [--eval-windows 0] [--whole] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

LLAMA8B = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
               rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
               tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
               bos_token_id=128000, eos_token_id=128001, dtype="bfloat16")
QWEN05B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
               max_position_embeddings=32768, tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0,
               hidden_act="silu", dtype="bfloat16")
SHAPES = {"llama8b": LLAMA8B, "qwen05b": QWEN05B}


def write_checkpoint(shape: str, cache: Path) -> Path:
    """The shape's config with random BF16 weights, one safetensors shard per decoder layer."""
    out = cache / f"{shape}-random-bf16"
    if (out / "model.safetensors.index.json").is_file():
        return out
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmsculpt.models.loading import load

    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(SHAPES[shape], indent=2))
    config = AutoConfig.from_pretrained(tmp)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    names = {n: tuple(t.shape) for n, t in skeleton.state_dict().items()}
    if config.tie_word_embeddings:
        names.pop("lm_head.weight", None)
    groups: dict[str, list[str]] = {}
    for n in names:
        key = ".".join(n.split(".")[:3]) if n.startswith("model.layers.") else n
        groups.setdefault(key, []).append(n)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, (key, members) in enumerate(groups.items()):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for n in members:
            if n.endswith("norm.weight"):
                tensors[n] = torch.ones(names[n], dtype=torch.bfloat16)
            else:
                tensors[n] = (torch.randn(names[n], generator=gen) * 0.02).to(torch.bfloat16)
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, file))
        print(f"wrote {file} ({', '.join(members[:2])}{'…' if len(members) > 2 else ''})", file=sys.stderr)
    total = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    load("smollm2-135m").tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def timed(cmd: list[str]) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", proc.stderr).group(1)
    own = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("\t") and "it/s" not in ln]
    return {"rc": proc.returncode, "peak_rss_bytes": rss, "wall": wall, "stdout": proc.stdout,
            "error": (own[-2] if len(own) > 1 else "") if proc.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    ap.add_argument("--methods", default="flap")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--n-samples", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "llmsculpt" / "bench")
    ap.add_argument("--whole", action="store_true", help="also run the whole-model prune (needs the RAM)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ckpt = write_checkpoint(args.shape, args.cache)
    sculpt = [sys.executable, "-m", "llmsculpt.cli.main"]
    rows = []
    for method in args.methods.split(","):
        est = timed([*sculpt, "estimate", "--model", str(ckpt), "--method", method, "--dtype", "bfloat16",
                     "--layer-by-layer", "--n-samples", str(args.n_samples), "--seq-len", str(args.seq_len),
                     "--eval-windows", str(args.eval_windows), "--json"])
        predicted = json.loads(est["stdout"])["peak_bytes"]
        modes = [("layer_by_layer", ["--layer-by-layer"])] + ([("whole", [])] if args.whole else [])
        for mode, flag in modes:
            with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
                evaluation = ["--eval-windows", str(args.eval_windows)] if args.eval_windows else ["--no-eval"]
                run = timed([*sculpt, "prune", "--model", str(ckpt), "--method", method, "--ratio", str(args.ratio),
                             "--dtype", "bfloat16", "--n-samples", str(args.n_samples), "--seq-len",
                             str(args.seq_len), *flag, *evaluation, "--no-plots", "--out", f"{tmp}/out", "--json"])
                report = json.loads(run["stdout"]) if run["rc"] == 0 else {}
                size = sum(p.stat().st_size for p in Path(tmp, "out").glob("*.safetensors")) if run["rc"] == 0 else 0
            row = {"shape": args.shape, "method": method, "mode": mode, "rc": run["rc"], "error": run["error"],
                   "peak_rss_gb": round(run["peak_rss_bytes"] / 1e9, 2), "wall": run["wall"],
                   "params_before": report.get("params_before"), "params_after": report.get("params_after"),
                   "ppl_before": report.get("ppl_before"), "ppl_after": report.get("ppl_after"),
                   "saved_gb": round(size / 1e9, 2)}
            if mode == "layer_by_layer":
                row |= {"estimate_gb": round(predicted / 1e9, 2),
                        "estimate_error": round(predicted / run["peak_rss_bytes"] - 1, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
