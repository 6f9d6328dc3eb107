"""Prune the default model (SmolLM2-135M-Instruct) at 20/40/50 % and print a table.

Columns: params, held-out perplexity before/after, wall seconds of pruning, the forward+backward
floor for the same calibration batch, their ratio, and peak RSS. Calibration text: the first 1 MB
of ../shared/data/text/enwiki_sample.txt; held-out text: its last 300 KB (128-token windows).

    python bench/prune_default.py [--ratios 0.2,0.4,0.5] [--method uniform] [--max-windows 80]
"""

from __future__ import annotations

import argparse
import copy
import resource
import time
from pathlib import Path

import torch

from llmsculpt import PruneConfig, prune
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def fwd_bwd_floor(model, batch: torch.Tensor, micro: int = 4) -> float:
    t0 = time.perf_counter()
    for ids in torch.split(batch, micro):
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.2,0.4,0.5")
    ap.add_argument("--method", default="uniform")
    ap.add_argument("--n-samples", type=int, default=10)
    ap.add_argument("--max-windows", type=int, default=80)
    args = ap.parse_args()
    text = DATA.read_text(encoding="utf-8")
    calib_text, held_out = text[:1_000_000], text[-300_000:]
    base = load("smollm2-135m", device="cpu")
    dense_ppl = perplexity(base.model, base.tokenizer, held_out, max_windows=args.max_windows).ppl
    from llmsculpt.calibration import calibration_batch

    batch = calibration_batch(base.tokenizer, texts=[calib_text], n_samples=args.n_samples, seq_len=128, seed=0)
    floor = fwd_bwd_floor(copy.deepcopy(base.model), batch)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        model = copy.deepcopy(base.model)
        cfg = PruneConfig(method=args.method, ratio=ratio, seed=0)
        cfg.data.n_samples = args.n_samples
        out = prune(model, tokenizer=base.tokenizer, config=cfg, calib_text=calib_text, inplace=True)
        ppl = perplexity(out.model, base.tokenizer, held_out, max_windows=args.max_windows).ppl
        r = out.report
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append((ratio, r["params_before"], r["params_after"], r["achieved_ratio"], dense_ppl, ppl, r["seconds"], floor, peak))
    print(f"method={args.method}  calibration: first 1 MB, {args.n_samples}x128 tokens; held-out: last 300 KB, "
          f"{args.max_windows} windows of 128")
    print("| target | params before | params after | removed | ppl before | ppl after | prune s | fwd+bwd floor s | ratio | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ratio, pb, pa, ach, p0, p1, sec, fl, peak in rows:
        print(f"| {ratio:.0%} | {pb:,} | {pa:,} | {ach:.1%} | {p0:.2f} | {p1:.2f} | {sec:.1f} | {fl:.1f} | {sec / fl:.2f}x | {peak:.0f} |")


if __name__ == "__main__":
    main()
