"""Padding query heads vs tied attention, for vLLM, at equal *served* parameters (issue 18).

vLLM's Nemotron-NAS route has one query-head count for all layers. Two exact ways to get there:
(a) prune freely (``--serve any``) and let ``export --format vllm`` pad every layer's query heads
    back to the largest count (zero q rows / o_proj columns, and zero K/V heads where the grouping
    needs them): the padding is served, so it counts; (b) plan with ``--serve vllm``: every layer
    keeps the same heads, MLP widths per layer, no padding.
(b) is pruned to the ratio; (a)'s ratio is raised (secant steps) until what vLLM serves of it
(``io.export_vllm.served_params``) matches (b). Same calibration text and seed as
bench/adaptive_vs_uniform.py; held-out perplexity on the last 300 KB of the text.

    python bench/serve_cost.py [--ratio 0.4] [--steps 5] [--iters 3] [--uniform]

Measured 2026-12-01 on the shared 2-core CPU box (smollm2-135m, dense 134.5M params, ppl 31.58):

| serve | ratio | params | served by vLLM | padded heads | query heads/layer | FFN widths | ppl |
|---|---|---|---|---|---|---|---|
| vllm | 0.4000 | 80,708,544 | 80,708,544 (40.0% off) | 0 | [9] | 26 | 294.44 |
| any | 0.4000 | 80,707,392 | 85,425,984 (36.5% off) | 57 | [3, 6, 9] | 25 | 258.66 |
| any | 0.4351 | 75,989,952 | 80,708,544 (40.0% off) | 57 | [3, 6, 9] | 28 | 446.62 |

At equal served parameters tied attention wins clearly (294 vs 447); at equal *nominal* parameters
the constraint costs 258.66 -> 294.44 (+14 %), which is what the padded plan hides in 4.7M served
zeros. Under the tie the default (K/V-group) adaptive prune keeps all 9 heads and puts the whole
40 % into per-layer MLP widths.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.io.export_vllm import plan_layout, served_params
from llmsculpt.models.loading import load
from llmsculpt.structures.shapes import architecture, count_params

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=60)
    ap.add_argument("--iters", type=int, default=3, help="runs of (a) to match the served parameters")
    ap.add_argument("--uniform", action="store_true", help="also --serve uniform at the ratio")
    args = ap.parse_args()
    text = DATA.read_text(encoding="utf-8")
    calib_text, held_out = text[:1_000_000], text[-300_000:]
    base = load("smollm2-135m", device="cpu")
    tok, dense_params = base.tokenizer, count_params(base.model)

    def run(serve: str, ratio: float):
        cfg = PruneConfig(method="adaptive", ratio=ratio, seed=0, serve=serve, options={"steps": args.steps})
        cfg.data.n_samples = args.n_samples
        out = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cfg, calib_text=calib_text)
        ppl = perplexity(out.model, tok, held_out, max_windows=args.max_windows).ppl
        arch = architecture(out.model)
        row = {"serve": serve, "ratio": ratio, "params": count_params(out.model),
               "served": served_params(out.model), "padded": plan_layout(out.model).padded_heads, "ppl": ppl,
               "heads": sorted({ls.n_heads for ls in arch.layers}), "ffn": len({ls.mlp for ls in arch.layers})}
        print(f"| {serve} | {ratio:.4f} | {row['params']:,} | {row['served']:,} ({1 - row['served'] / dense_params:.1%} "
              f"off) | {row['padded']} | {row['heads']} | {row['ffn']} | {ppl:.2f} |", flush=True)
        return row

    dense = perplexity(base.model, tok, held_out, max_windows=args.max_windows).ppl
    print(f"smollm2-135m dense {dense_params:,} params, ppl {dense:.2f}; adaptive T={args.steps}, "
          f"{args.n_samples}x128 calibration, {args.max_windows} held-out windows")
    print("| serve | ratio | params | served by vLLM | padded heads | query heads/layer | FFN widths | ppl |")
    print("|---|---|---|---|---|---|---|---|")
    tied = run("vllm", args.ratio)
    target = tied["served"]
    if args.uniform:
        run("uniform", args.ratio)
    points = [(args.ratio, run("any", args.ratio)["served"])]
    ratio = args.ratio + (points[0][1] - target) / dense_params
    for _ in range(args.iters - 1):
        points.append((ratio, run("any", ratio)["served"]))
        (r0, s0), (r1, s1) = points[-2], points[-1]
        if s1 == target or s0 == s1:
            break
        ratio = r1 + (s1 - target) * (r1 - r0) / (s0 - s1)


if __name__ == "__main__":
    main()
