"""Sweep of Adapt-Pruner's allocation knobs on the default model, no training (issue 17).

Each row prunes smollm2-135m to ``--ratio`` removed with one change from the base setting and
reports held-out perplexity, its ratio to iterative uniform (A = 0) with the same steps and data,
the spread of the final per-layer sparsity, and seconds. Text: the embedded default text
(calibration: its first 80 %, held-out: the last 20 %), or ``--text FILE`` (first 80 % / last
20 % by characters) to confirm on a second one, e.g. ../shared/data/text/lee_news.txt.

    nice -n 5 python bench/sweep_adaptive.py [--ratio 0.4] [--only base,a=2] [--text FILE]

Measured (2 shared CPU cores, load 6–8, so seconds are loose; embedded text, 40 % removed, T = 5,
8×128 calibration, 40 windows; dense ppl 23.32):

| variant | a | norm | cumul. | params | ppl | ÷ A=0 | sparsity min–max | s |
|---|---|---|---|---|---|---|---|---|
| uniform-it (A = 0) | 0 | – | – | 80,705,664 | 473.81 | 1.00 | 0.51–0.51 | 597 |
| rank | 1 | rank | yes | 80,707,392 | 691.73 | 1.46 | 0.01–0.92 | 228 |
| base (chosen) | 1 | max | yes | 80,707,392 | 214.53 | 0.45 | 0.00–0.54 | 310 |
| a=2 | 2 | max | yes | 80,707,968 | 206.69 | 0.44 | 0.00–0.56 | 459 |
| old per-step (previous code) | 0.2 | max | no | 80,708,544 | 372.92 | 0.79 | 0.49–0.51 | 43 |
| equal split (proportional) | 1 | max | yes | 80,707,392 | 2,759.45 | 5.82 | 0.00–0.55 | 34 |
| inner | 1 | inner | yes | 80,706,816 | 265.75 | 0.56 | 0.03–0.63 | 39 |
| mad | 1 | mad | yes | 80,707,392 | 482.52 | 1.02 | 0.09–0.82 | 41 |
| T=10 uniform-it (A = 0) | 0 | – | – | 80,705,088 | 675.37 | 1.00 | 0.51–0.51 | 74 |
| T=10 | 1 | max | yes | 80,708,544 | 233.48 | 0.35 | 0.00–0.54 | 69 |

Second text (``--text ../shared/data/text/lee_news.txt``, same settings): uniform-it 639.04, base
286.85 (0.45×). Final per-layer sparsity of base there: layer 0 0.00, layers 1/24/29 0.43–0.46, the
rest 0.52–0.54 — the gain is mostly from sparing layer 0.

``max`` spares layer 0 (Î = +1; never pruned) and prunes the near-identical middle layers alike;
``rank`` spreads them over [−1, 1] on differences of ~0.01 in −cos, i.e. on noise, and ends at
0.92 sparsity in some layers (mad: 0.82). a = 1 and 2 agree within noise; a = 1 is the paper's
size. Without accumulation (the old code) the layers stay at 0.49–0.51. The equal-fraction split
must cut one of 3 K/V groups per layer at this sparsity: 5.8× worse, so ``importance`` stays.
T = 10 gives 0.35× of its own A = 0 but a higher ppl than T = 5 (233 vs 215): T = 5 is the
default (half the cost). Not yet measured: n = 16.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.calibration import default_documents
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load

BASE = {"amplitude": 1.0, "steps": 5, "normalise": "max", "cumulative": True}  # the chosen defaults
# name -> (option changes, config changes), in priority order; "uniform-it" rows are the A = 0
# reference of each (steps, n). "old" is the previous code: per-step offsets, max-normalised,
# A = 0.02 absolute ≈ a = 0.2 of a 0.1 step at 40 % and T = 5.
VARIANTS = {
    "uniform-it": ({"amplitude": 0.0}, {}),
    "base": ({}, {}),
    "rank": ({"normalise": "rank"}, {}),
    "a=2": ({"amplitude": 2.0}, {}),
    "old per-step": ({"cumulative": False, "amplitude": 0.2}, {}),
    "a=0.5": ({"amplitude": 0.5}, {}),
    "equal split": ({}, {"split": "proportional"}),
    "inner": ({"normalise": "inner"}, {}),
    "mad": ({"normalise": "mad"}, {}),
    "T=10 uniform-it": ({"steps": 10, "amplitude": 0.0}, {}),
    "T=10": ({"steps": 10}, {}),
    "n=16 uniform-it": ({"amplitude": 0.0}, {"n_samples": 16}),
    "n=16": ({}, {"n_samples": 16}),
}


def texts(path: str | None) -> tuple[str, str]:
    if path is None:
        return "\n\n".join(default_documents("calibration")), "\n\n".join(default_documents("heldout"))
    text = Path(path).read_text(encoding="utf-8")
    cut = int(len(text) * 0.8)
    return text[:cut], text[cut:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--text", default=None, help="text file to calibrate and evaluate on (default: embedded)")
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--reference", type=float, default=None,
                    help="A = 0 perplexity at the base steps and n from an earlier run (skips recomputing it)")
    args = ap.parse_args()
    calib_text, held_out = texts(args.text)
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    names = args.only.split(",") if args.only else list(VARIANTS)
    dense = perplexity(base.model, tok, held_out, seq_len=128, max_windows=args.max_windows).ppl
    print(f"smollm2-135m, {args.ratio:.0%} removed, no training; text: {args.text or 'embedded'}; calibration "
          f"{args.n_samples}x128 resampled each step, seed 0; held-out {args.max_windows} windows of 128; dense ppl {dense:.2f}")
    print(f"base options: {BASE}, split importance")
    print("| variant | T | a | norm | cumul. | split | n | params | ppl | ÷ A=0 | sparsity min–max | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    reference: dict[tuple, float] = {}
    if args.reference:
        reference[(BASE["steps"], args.n_samples)] = args.reference
    layers: dict[str, list[float]] = {}
    for name in names:
        opt_change, cfg_change = VARIANTS[name]
        opts = {**BASE, **opt_change}
        cfg = PruneConfig(method="adaptive", ratio=args.ratio, seed=0, options=opts, split=cfg_change.get("split"))
        cfg.data.n_samples = cfg_change.get("n_samples", args.n_samples)
        t0 = time.perf_counter()
        out = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cfg, calib_text=calib_text, progress=True)
        sec = time.perf_counter() - t0
        ppl = perplexity(out.model, tok, held_out, seq_len=128, max_windows=args.max_windows).ppl
        key = (opts["steps"], cfg.data.n_samples)
        if opts["amplitude"] == 0:
            reference[key] = ppl
        rel = f"{ppl / reference[key]:.2f}" if key in reference else "–"
        last = out.report["history"]["steps"][-1]["layer_sparsity"].values()
        layers[name] = list(last)
        print(f"| {name} | {opts['steps']} | {opts['amplitude']} | {opts['normalise']} | {opts['cumulative']} | "
              f"{cfg.split or 'importance'} | {cfg.data.n_samples} | {out.report['params_after']:,} | {ppl:.2f} | {rel} | "
              f"{min(last):.2f}–{max(last):.2f} | {sec:.0f} |", flush=True)
    print("\nfinal per-layer sparsity (layer 0 first):")
    for name, values in layers.items():
        print(f"  {name}: " + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()

