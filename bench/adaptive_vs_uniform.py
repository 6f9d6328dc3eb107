"""Adapt-Pruner vs uniform on the default model, no fine-tuning.

Same calibration text (first 1 MB of ../shared/data/text/enwiki_sample.txt) and seed for every
row; held-out perplexity on the file's last 300 KB (128-token windows). Rows: one-shot uniform,
iterative uniform (A = 0, T steps) and adaptive at the given amplitudes; plus seconds per step vs
the forward+backward floor of one calibration batch.

    python bench/adaptive_vs_uniform.py [--ratios 0.2,0.4,0.5] [--steps 5] [--amplitudes 0.02,0.05]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.calibration import calibration_batch
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.2,0.4,0.5")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--amplitudes", default="0.02,0.05")
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=60)
    ap.add_argument("--layers", default=None, help="layer range that may be pruned (default all)")
    ap.add_argument("--splits", default="proportional,importance", help="attention/MLP split(s) to compare")
    args = ap.parse_args()
    text = DATA.read_text(encoding="utf-8")
    calib_text, held_out = text[:1_000_000], text[-300_000:]
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    dense = perplexity(base.model, tok, held_out, max_windows=args.max_windows).ppl
    batch = calibration_batch(tok, texts=[calib_text], n_samples=args.n_samples, seq_len=128, seed=0)
    m = copy.deepcopy(base.model)
    t0 = time.perf_counter()
    for ids in batch.split(4):
        m(input_ids=ids, labels=ids).loss.backward()
    floor = time.perf_counter() - t0
    del m
    variants = [("uniform one-shot", "uniform", {}), (f"uniform iterative A=0 T={args.steps}", "adaptive",
                {"amplitude": 0.0, "steps": args.steps})]
    for a in [float(x) for x in args.amplitudes.split(",") if x]:
        variants.append((f"adaptive A={a} T={args.steps}", "adaptive", {"amplitude": a, "steps": args.steps}))
    print(f"dense ppl {dense:.2f}; calibration {args.n_samples}x128 from the first 1 MB; held-out: last 300 KB, "
          f"{args.max_windows} windows; fwd+bwd floor of one calibration batch {floor:.1f}s; layers {args.layers or 'all'}")
    print("| ratio | split | variant | params | ppl | prune s | s/step | s/step ÷ floor |")
    print("|---|---|---|---|---|---|---|---|")
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for split in args.splits.split(","):
            for name, method, opts in variants:
                cfg = PruneConfig(method=method, ratio=ratio, seed=0, options=opts, layers=args.layers, split=split)
                cfg.data.n_samples = args.n_samples
                out = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cfg, calib_text=calib_text)
                ppl = perplexity(out.model, tok, held_out, max_windows=args.max_windows).ppl
                steps = opts.get("steps", 1)
                sec = out.report["seconds"]
                print(f"| {ratio:.0%} | {split} | {name} | {out.report['params_after']:,} | {ppl:.2f} | {sec:.1f} | "
                      f"{sec / steps:.1f} | {sec / steps / floor:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
