"""Sample-aware search on the default model at 20 %: TPE vs random vs the fixed LLM-Pruner metric
(uniform, Taylor) with random calibration, same trial budget; held-out ppl of the final models.

Candidate pool and calibration from the first 1 MB of ../shared/data/text/enwiki_sample.txt; the
search objective uses a middle slice as its eval text; final models are scored on the last 300 KB.

    python bench/search.py [--trials 8] [--pool-size 16] [--n-samples 4]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load
from llmsculpt.search.study import Objective, SearchSetup, run_study

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--pool-size", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.2)
    args = ap.parse_args()
    text = DATA.read_text(encoding="utf-8")
    calib, search_eval, held = text[:1_000_000], text[1_500_000:1_600_000], text[-300_000:]
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    cfg = PruneConfig(ratio=args.ratio, data={"seq_len": 128, "n_samples": args.n_samples})
    setup = SearchSetup(base.model, tok, cfg, [search_eval], pool_size=args.pool_size, n_samples=args.n_samples, eval_windows=12)
    objective = Objective(setup, calib_text=calib)
    print(f"pool of {args.pool_size} cached in {objective.cache_seconds:.1f}s; {args.trials} trials per sampler")
    print("| search | best search ppl | held-out ppl of final model | s/trial |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in ("tpe", "random"):
            t0 = time.perf_counter()
            study = run_study(objective, Path(tmp) / sampler, sampler=sampler, trials=args.trials)
            per = (time.perf_counter() - t0) / args.trials
            recipe = objective.recipe(study.best_params)
            final = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=recipe).model
            print(f"| {sampler} | {study.best_value:.2f} | {perplexity(final, tok, held, max_windows=40).ppl:.2f} | {per:.1f} |", flush=True)
    fixed = PruneConfig(method="uniform", ratio=args.ratio, metric="taylor")
    fixed.data.n_samples = args.n_samples
    out = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=fixed, calib_text=calib)
    print(f"| fixed LLM-Pruner (uniform, taylor, random calibration) | - | {perplexity(out.model, tok, held, max_windows=40).ppl:.2f} | - |")


if __name__ == "__main__":
    main()
