"""Every pruning method at 20/40/50 % on the default model, no fine-tuning, apples to apples.

Same calibration data (first 1 MB of ../shared/data/text/enwiki_sample.txt, 8×128 tokens, seed 0)
and held-out text (its last 300 KB, 128-token windows) for all; multiple-choice accuracy on the
shared BIG-bench tasks (``--mc-limit`` examples each); prune seconds; batch-1 decode speed-up over
the dense model. Writes bench/results/compare.md and compare.png (ppl vs params per method).

    python bench/compare.py [--methods uniform,adaptive] [--ratios 0.2,0.4]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.eval.multiple_choice import load_mc_task, score_mc
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.eval.speed import measure_speed
from llmsculpt.models.loading import load

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results"
METHODS = "uniform,magnitude,wanda-sp,flap,shortgpt,adaptive"


def evaluate(model, tok, held_out, tasks, args):
    ppl = perplexity(model, tok, held_out, max_windows=args.max_windows).ppl
    accs = [score_mc(model, tok, t, limit=args.mc_limit).acc for t in tasks]
    speed = measure_speed(model, batch_sizes=(1,), prompt_len=64, new_tokens=16, repeats=2)
    return ppl, sum(accs) / len(accs), speed.points[0].decode_tokens_per_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--ratios", default="0.2,0.4,0.5")
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--mc-limit", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="adaptive steps")
    args = ap.parse_args()
    text = (SHARED / "text" / "enwiki_sample.txt").read_text(encoding="utf-8")
    calib_text, held_out = text[:1_000_000], text[-300_000:]
    tasks = [load_mc_task(p) for p in sorted((SHARED / "bigbench").glob("*.json"))]
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    dense_ppl, dense_acc, dense_tps = evaluate(base.model, tok, held_out, tasks, args)
    rows = [("dense", 0.0, sum(p.numel() for p in base.model.parameters()), dense_ppl, dense_acc, 0.0, 1.0)]
    header = "| method | target | params | held-out ppl | BIG-bench acc | prune s | decode speed-up (bs 1) |\n|---|---|---|---|---|---|---|"
    print(f"calibration {args.n_samples}x128 from the first 1 MB; held-out last 300 KB ({args.max_windows} windows); "
          f"BIG-bench: {len(tasks)} tasks x {args.mc_limit} examples, mean acc", flush=True)
    print(header, flush=True)
    print(f"| dense | 0% | {rows[0][2]:,} | {dense_ppl:.2f} | {dense_acc:.3f} | 0 | 1.00x |", flush=True)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for method in args.methods.split(","):
            cfg = PruneConfig(method=method, ratio=ratio, seed=0, options={"steps": args.steps} if method == "adaptive" else {})
            cfg.data.n_samples = args.n_samples
            try:
                out = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cfg, calib_text=calib_text)
            except Exception as exc:  # report, keep going
                print(f"| {method} | {ratio:.0%} | failed: {exc} | | | | |", flush=True)
                continue
            ppl, acc, tps = evaluate(out.model, tok, held_out, tasks, args)
            r = out.report
            rows.append((method, ratio, r["params_after"], ppl, acc, r["seconds"], tps / dense_tps))
            print(f"| {method} | {ratio:.0%} | {r['params_after']:,} | {ppl:.2f} | {acc:.3f} | {r['seconds']:.1f} | "
                  f"{tps / dense_tps:.2f}x |", flush=True)
    OUT.mkdir(exist_ok=True)
    lines = [header] + [f"| {m} | {t:.0%} | {p:,} | {ppl:.2f} | {a:.3f} | {s:.1f} | {sp:.2f}x |" for m, t, p, ppl, a, s, sp in rows]
    (OUT / "compare.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method in dict.fromkeys(m for m, *_ in rows[1:]):
        pts = sorted((p, ppl) for m, _, p, ppl, *_ in rows if m == method)
        ax.plot([p / 1e6 for p, _ in pts], [v for _, v in pts], marker="o", label=method)
    ax.axhline(dense_ppl, color="gray", linestyle="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("held-out perplexity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "compare.png", dpi=110)
    print(f"wrote {OUT / 'compare.md'} and {OUT / 'compare.png'}")


if __name__ == "__main__":
    main()
