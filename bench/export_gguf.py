"""llama.cpp speed of the dense and a pruned default model, exported with `sculpt export`.

Prunes SmolLM2-135M by --ratio with the given method (default adaptive, 3 steps), exports both to
GGUF and measures llama-cpp-python prefill and decode tokens/s (batch 1, best of --repeats, after a
warm-up) for each --dtypes, plus the max abs difference of all next-token logits vs PyTorch on a
prompt (f32 export, f32 K/V cache, so the number measures the export and not llama.cpp's f16 cache).
In q8_0 files of the pruned model, matrices whose row width is not a multiple of 32 stay f16
(``allow_mixed``; a warning names them); prune with ``--round-to 32`` for an all-q8_0 file.

llama.cpp's extra (repacking) buffer types are off unless --extra-bufts: its AMX q8_0 kernel segfaults
on some CPUs (ggml-org/llama.cpp#20824).

    python bench/export_gguf.py [--ratio 0.5] [--method adaptive] [--dtypes f16,q8_0] [--threads 2] [--extra-bufts]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmsculpt import PruneConfig, prune
from llmsculpt.io.export_gguf import export_gguf, gguf_target
from llmsculpt.models.loading import load
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.testing.llama_cpp import open_llama

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"
PROMPT = "The history of the city begins in the early middle ages, when"


def speed(path: Path, ids: list[int], *, threads: int, new_tokens: int, repeats: int,
          extra_bufts: bool = False) -> tuple[float, float]:
    """Best-of-``repeats`` prefill tokens/s over ``ids`` and greedy decode tokens/s after it."""
    llm = open_llama(path, extra_bufts=extra_bufts, n_ctx=512, n_batch=512, verbose=False, n_threads=threads,
                     n_threads_batch=threads)
    llm.eval(ids[:16])  # warm-up
    best_pre = best_dec = 0.0
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        best_pre = max(best_pre, len(ids) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        best_dec = max(best_dec, new_tokens / (time.perf_counter() - t0))
    llm.close()
    return best_pre, best_dec


def logit_diff(model, ids: list[int], path: Path, *, extra_bufts: bool = False) -> tuple[float, float]:
    """Max |PyTorch - llama.cpp| over all positions and the vocabulary, and max |logit| for scale."""
    llm = open_llama(path, extra_bufts=extra_bufts, n_ctx=128, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    llm.close()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(ours - theirs).max()), float(np.abs(ours).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--method", default="adaptive")
    ap.add_argument("--dtypes", default="f16,q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=128, help="prompt tokens for the prefill measurement")
    ap.add_argument("--decode", type=int, default=64, help="generated tokens for the decode measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extra-bufts", action="store_true", help="let llama.cpp repack weights (AMX etc.)")
    args = ap.parse_args()
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    cfg = PruneConfig(method=args.method, ratio=args.ratio, options={"steps": 3} if args.method == "adaptive" else {})
    cfg.data.n_samples = 8
    text = DATA.read_text(encoding="utf-8")[:1_000_000]
    t0 = time.perf_counter()
    pruned = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cfg, calib_text=text).model
    print(f"pruned in {time.perf_counter() - t0:.0f} s")
    bench_ids = tok(text[:20_000], add_special_tokens=False).input_ids[: args.prefill]
    diff_ids = tok(PROMPT, add_special_tokens=False).input_ids
    print("| model | params | llama.cpp arch | dtype | file MB | prefill tok/s | decode tok/s | max abs logit diff (f32) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("dense", base.model), (f"{args.method} {args.ratio:.0%}", pruned)):
            target = gguf_target(architecture(model))
            f32 = export_gguf(model, tok, Path(tmp) / "m.f32.gguf", dtype="f32", overwrite=True)
            diff, scale = logit_diff(model, diff_ids, f32, extra_bufts=args.extra_bufts)
            for dtype in args.dtypes.split(","):
                path = export_gguf(model, tok, Path(tmp) / f"m.{dtype}.gguf", dtype=dtype, overwrite=True,
                                   allow_mixed=True)
                pre, dec = speed(path, bench_ids, threads=args.threads, new_tokens=args.decode, repeats=args.repeats,
                                 extra_bufts=args.extra_bufts)
                print(f"| {name} | {count_params(model):,} | {target.name} | {dtype} | {path.stat().st_size / 2**20:.0f} "
                      f"| {pre:.0f} | {dec:.1f} | {diff:.1e} (of {scale:.0f}) |", flush=True)


if __name__ == "__main__":
    main()
