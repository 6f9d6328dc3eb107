"""Peer bench (issue 17): our methods and Torch-Pruning's own LLM recipe at equal parameter counts
on the default model (smollm2-135m), no recovery training.

Rows: one-shot uniform Taylor (LLM-Pruner's recipe: proportional split), iterative uniform
(adaptive with A = 0, same steps and data), adaptive (defaults, same steps), FLAP, Wanda-sp,
ShortGPT (whole layers: lands on the nearest layer count, so a little below the target) and
Torch-Pruning 1.6.1 (bench/_tp_recipe.py; hidden + MLP channels; its head groups cannot be built
on transformers 5, see there), its per-dimension ratio bisected to the same parameter count.
Calibration: the embedded text's calibration part, ``--n-samples`` × 128, seed 0 (resampled each
step for the iterative rows); held-out: the embedded text's held-out part, ``--max-windows``
windows of 128. Seconds are pruning only (not evaluation).

    pip install torch-pruning==1.6.1
    nice -n 5 python bench/peers.py [--ratios 0.4,0.5] [--methods uniform,tp] [--steps 5] [--text FILE]

``--text FILE`` calibrates on the file's first 80 % and evaluates on the rest (as bench/sweep_adaptive.py).

Measured (2 shared CPU cores; seconds loose: load 6–8 during the 40 % rows, ~3 during 50 %; the
40 % iterative rows are bench/sweep_adaptive.py's identical runs; dense ppl 23.32, 134,515,008):

| removed | method | params | held-out ppl | prune s |
|---|---|---|---|---|
| 40 % | uniform one-shot (Taylor) | 80,687,808 | 470,319 | 35 |
| 40 % | iterative uniform (A=0, T=5) | 80,705,664 | 473.81 | 597 |
| 40 % | adaptive (defaults, T=5) | 80,707,392 | **214.53** | 310 |
| 40 % | flap | 80,707,392 | 1,079.82 | 28 |
| 40 % | wanda-sp | 80,687,808 | 30,828 | 10 |
| 40 % | shortgpt | 77,873,472 (−3.5 %) | 510.81 | 7 |
| 40 % | torch-pruning 1.6.1 (hidden+MLP) | 80,750,560 | 220,432 | 134 |
| 50 % | uniform one-shot (Taylor) | 67,209,408 | 1,288,716 | 27 |
| 50 % | iterative uniform (A=0, T=5) | 67,233,024 | 3,269.21 | 231 |
| 50 % | adaptive (defaults, T=5) | 67,257,216 | **1,758.84** | 40 |
| 50 % | flap | 67,256,640 | 7,379.37 | 5 |
| 50 % | wanda-sp | 67,209,408 | 76,426 | 3 |
| 50 % | shortgpt | 67,253,184 | 21,341 | 23 |
| 50 % | torch-pruning 1.6.1 (hidden+MLP) | 67,219,460 | 600,021 | 128 |

``--hidden`` rows (rows uniform-h, uniform-it-h, adaptive-h; ``--hidden-rate`` r: the hidden width
loses r × the layers' common sparsity; 40 %, same data and steps; load 4–7; one run each):

| removed | method | hidden | params | held-out ppl | prune s |
|---|---|---|---|---|---|
| 40 % | uniform one-shot (Taylor) --hidden 1 | 431 | 80,688,803 | 29,575 | 59 |
| 40 % | uniform one-shot (Taylor) --hidden 0.25 | 516 | 80,672,988 | 16,064 | 50 |
| 40 % | iterative uniform (A=0, T=5) --hidden 0.25 | 516 | 80,704,464 | 1,353.59 | 254 |
| 40 % | adaptive (defaults) --hidden 1 | 431 | 80,708,602 | 3,794.44 | 320 |
| 40 % | adaptive (defaults) --hidden 0.5 | 477 | 80,708,877 | 1,318.53 | 248 |
| 40 % | adaptive (defaults) --hidden 0.25 | 516 | 80,707,560 | 392.44 | 113 |
| 50 % | iterative uniform (A=0, T=5) --hidden 0.25 | 499 | 67,223,284 | 3,621.93 | 140 |
| 50 % | adaptive (defaults) --hidden 0.25 | 499 | 67,257,216 | **1,300.11** | 277 |

Second text (``--text ../shared/data/text/lee_news.txt``; 2026-12-01, the same 2 cores shared with two
other sessions, load 4–5; rows without ``--hidden`` from bench/sweep_adaptive.py's identical runs):

| removed | method | hidden | params | held-out ppl | prune s |
|---|---|---|---|---|---|
| 40 % | iterative uniform (A=0, T=5) (earlier session) | 576 | – | 639.04 | – |
| 40 % | adaptive (defaults) (earlier session) | 576 | – | **286.85** | – |
| 50 % | iterative uniform (A=0, T=5) | 576 | 67,233,600 | 6,424.48 | 206 |
| 50 % | adaptive (defaults) | 576 | 67,257,216 | **1,580.09** | 120 |
| 40 % | iterative uniform (A=0, T=5) --hidden 0.25 | 516 | 80,704,464 | 2,243.34 | 192 |
| 40 % | adaptive (defaults) --hidden 0.25 | 516 | 80,707,560 | **582.99** | 226 |
| 50 % | iterative uniform (A=0, T=5) --hidden 0.25 | 499 | 67,227,276 | 4,122.86 | 222 |
| 50 % | adaptive (defaults) --hidden 0.25 | 499 | 67,257,216 | **1,199.20** | 236 |
| 40 % | flap | 576 | 80,708,544 | 1,524.54 | 19 |
| 40 % | torch-pruning 1.6.1 (hidden+MLP, ratio 0.383) | – | 80,750,560 | 184,340 | 111 |
| 50 % | flap | 576 | 67,256,064 | 6,862.39 | 7 |
| 50 % | torch-pruning 1.6.1 (hidden+MLP, ratio 0.464) | – | 67,219,460 | 545,912 | 108 |

Adaptive (defaults) ÷ iterative uniform, no training: embedded 0.45× (40 %) and 0.54× (50 %: the one
cell above 0.5×; bench/sweep_adaptive.py says why), lee_news 0.45× and 0.25×; with ``--hidden 0.25``
0.29× / 0.36× embedded, 0.26× / 0.29× lee_news. Below FLAP and Torch-Pruning in every cell.

Hidden channels are expensive on this narrow (576), deep (30 layers) model: removing 58 of 576 by
Taylor alone (10 % of the parameters, nothing else) takes the held-out ppl from 26.1 to 134 (20
windows; L2 magnitude 5,652, random 3,654; without surgery's RMSNorm rescale 144). So with no
recovery training at 40 % every ``--hidden`` row loses to its heads+MLP-only row except one-shot
uniform, whose layers are pruned less deeply (S 0.51 -> 0.25–0.45) and which is so bad without it.
At 50 % a little hidden pruning pays for adaptive: ``--hidden 0.25`` 1,300 vs 1,759 (embedded) and
1,199 vs 1,580 (lee_news): the hidden width takes part of the cut, so the layers are pruned less deeply.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_adaptive import texts  # noqa: E402  (embedded text, or a file's first 80 % / last 20 %)
ROWS = {  # name -> (method, options)
    "uniform one-shot (Taylor)": ("uniform", {}),
    "iterative uniform (A=0)": ("adaptive", {"amplitude": 0.0}),
    "adaptive (defaults)": ("adaptive", {}),
    "flap": ("flap", {}),
    "wanda-sp": ("wanda-sp", {}),
    "shortgpt": ("shortgpt", {}),
    "torch-pruning 1.6.1": ("tp", {}),
    # hidden (stem) channels pruned too (PruneConfig.hidden = --hidden-rate): the hidden width loses
    # rate × the layers' common sparsity
    "uniform one-shot (Taylor) --hidden": ("uniform", {}),
    "iterative uniform (A=0) --hidden": ("adaptive", {"amplitude": 0.0}),
    "adaptive (defaults) --hidden": ("adaptive", {}),
}
SHORT = {"uniform": 0, "uniform-it": 1, "adaptive": 2, "flap": 3, "wanda-sp": 4, "shortgpt": 5, "tp": 6,
         "uniform-h": 7, "uniform-it-h": 8, "adaptive-h": 9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.4,0.5")
    ap.add_argument("--methods", default=",".join(SHORT), help=f"subset of {','.join(SHORT)}")
    ap.add_argument("--steps", type=int, default=5, help="steps of both iterative rows")
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--hidden-rate", type=float, default=1.0, help="PruneConfig.hidden of the --hidden rows")
    ap.add_argument("--text", default=None, help="text file to calibrate and evaluate on (first 80 %% / last 20 %%; "
                    "default: the embedded text)")
    args = ap.parse_args()
    calib_text, held_out = texts(args.text)
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    n0 = sum(p.numel() for p in base.model.parameters())
    dense = perplexity(base.model, tok, held_out, seq_len=128, max_windows=args.max_windows).ppl
    names = [list(ROWS)[SHORT[m]] for m in args.methods.split(",")]
    print(f"smollm2-135m ({n0:,} params, dense ppl {dense:.2f}); calibration {args.n_samples}x128 seed 0 from the "
          f"{args.text or 'embedded text'}; held-out {args.max_windows} windows of 128; iterative rows T={args.steps}; no training")
    print("| removed | method | params | vs target | held-out ppl | prune s |\n|---|---|---|---|---|---|", flush=True)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        target = n0 - int(round(ratio * n0))
        for name in names:
            method, opts = ROWS[name]
            t0 = time.perf_counter()
            if method == "tp":
                from _tp_recipe import match_params, n_params

                dim_ratio, model = match_params(copy.deepcopy(base.model), target, hidden=True)
                assert model.model.embed_tokens.weight.shape[1] == model.lm_head.in_features
                params, label = n_params(model), f"{name} (hidden+MLP, ratio {dim_ratio:.3f})"
            else:
                if method == "adaptive":
                    opts = {"steps": args.steps, **opts}
                hidden = args.hidden_rate if name.endswith("--hidden") else 0.0
                cfg = PruneConfig(method=method, ratio=ratio, seed=0, options=opts, hidden=hidden)
                label = name if not hidden else f"{name} {hidden:g}"
                cfg.data.n_samples = args.n_samples
                out = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cfg, calib_text=calib_text)
                model, params = out.model, out.report["params_after"]
                if hidden:
                    label += f" (hidden {model.config.hidden_size})"
            sec = time.perf_counter() - t0
            ppl = perplexity(model, tok, held_out, seq_len=128, max_windows=args.max_windows).ppl
            print(f"| {ratio:.0%} | {label} | {params:,} | {params / target - 1:+.2%} | {ppl:.2f} | {sec:.0f} |", flush=True)
            del model


if __name__ == "__main__":
    main()
