"""Prefill and decode throughput in vLLM (CPU build, offline ``LLM.generate``): dense default model vs
uniform 50 % vs adaptive (per-layer) 50 %, each exported with ``export_vllm``; prints tok/s and ratios.

The prunes and exports run here (main environment); vLLM runs in its own cached environment
(llmsculpt.testing.vllm_env), this same file with ``--inner``. Fixed random prompts of ``--prompt-len``
tokens; prefill = ``max_tokens=1``, decode = (time for ``--new`` tokens - prefill time), ignore_eos,
greedy; one warm-up call per model and batch size first.

    python bench/serve_vllm.py [--work DIR] [--batches 1,32] [--prompt-len 128] [--new 64] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def inner(args) -> None:
    """In the vLLM environment: one JSON line of {model: {batch: {prefill, decode}}} tok/s."""
    import gc
    import random

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    results = {}
    for name, directory in json.loads(args.models).items():
        llm = LLM(model=directory, trust_remote_code=True, enforce_eager=True, dtype=args.dtype,
                  max_model_len=args.prompt_len + args.new + 8, max_num_seqs=max(args.batches), seed=0)
        vocab = llm.get_tokenizer().vocab_size
        rng = random.Random(0)
        results[name] = {}
        for b in args.batches:
            prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(10, vocab) for _ in range(args.prompt_len)])
                       for _ in range(b)]

            def timed(n: int) -> float:
                params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
                t0 = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                return time.perf_counter() - t0

            timed(2)  # warm-up
            prefill = min(timed(1) for _ in range(2))
            total = timed(args.new)
            results[name][b] = {"prefill": b * args.prompt_len / prefill,
                                "decode": b * (args.new - 1) / max(total - prefill, 1e-9)}
        del llm
        gc.collect()
    print(json.dumps(results), flush=True)


def prepare(work: Path, ratio: float) -> dict[str, str]:
    """Dense, uniform and adaptive prunes of the default model, exported for vLLM (reused when present)."""
    import copy

    from llmsculpt import PruneConfig, prune
    from llmsculpt.io.export_vllm import export_vllm, plan_layout
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import count_params

    base = load("smollm2-135m", device="cpu")
    text = DATA.read_text(encoding="utf-8")[:1_000_000]
    dirs = {}
    for name, method in (("dense", None), (f"uniform {ratio:.0%}", "uniform"),
                         (f"adaptive {ratio:.0%} --serve vllm", "adaptive")):
        out = work / name.split()[0]
        dirs[name] = str(out)
        if (out / "config.json").is_file():
            continue
        model = base.model
        if method is not None:
            cfg = PruneConfig(method=method, ratio=ratio, seed=0, serve="vllm",  # shapes vLLM runs without padding
                              options={"steps": 3} if method == "adaptive" else {})
            cfg.data.n_samples = 8
            model = prune(copy.deepcopy(base.model), inplace=True, tokenizer=base.tokenizer, config=cfg, calib_text=text).model
        layout = plan_layout(model)
        export_vllm(model, base.tokenizer, out)
        print(f"{name}: {count_params(model):,} params, vLLM layout {layout.route}"
              + (f" ({layout.padded_heads} padded query heads)" if layout.route == "nemotron-nas" else ""))
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="bench-serve-vllm", help="where the exported models are kept")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.inner:
        return inner(args)

    import os

    from llmsculpt.testing.vllm_env import vllm_env, vllm_python

    dirs = prepare(Path(args.work), args.ratio)
    python, why = vllm_python()
    if python is None:
        sys.exit(f"serve_vllm: {why}")
    cmd = [str(python), __file__, "--inner", "--models", json.dumps(dirs), "--batches",
           ",".join(map(str, args.batches)), "--prompt-len", str(args.prompt_len), "--new", str(args.new),
           "--dtype", args.dtype]
    res = subprocess.run(cmd, capture_output=True, text=True, env=vllm_env())
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"serve_vllm: vLLM run failed:\n{res.stderr[-3000:]}")
    got = json.loads(lines[-1])
    dense = got["dense"]
    print(f"vLLM {args.dtype}, prompt {args.prompt_len} tokens, {args.new} new tokens, {os.cpu_count()} CPU cores")
    print("| model | batch | prefill tok/s | decode tok/s | prefill ÷ dense | decode ÷ dense |")
    print("|---|---|---|---|---|---|")
    for name, rows in got.items():
        for b, r in rows.items():
            print(f"| {name} | {b} | {r['prefill']:.0f} | {r['decode']:.1f} | {r['prefill'] / dense[b]['prefill']:.2f} "
                  f"| {r['decode'] / dense[b]['decode']:.2f} |")


if __name__ == "__main__":
    main()
