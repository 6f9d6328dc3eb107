"""`sculpt search`: AdaPruner's Bayesian search (TPE) over calibration samples and the importance
mix; writes best.yaml for `sculpt prune --config` and recipe.yaml (this search's) into the study."""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import (add_config_argument, add_model_argument, add_placement_arguments, add_serve_argument,
                                   recipe_from_args)

FIELDS = ("model", "ratio", "target_params", "trials", "timeout", "sampler", "n_samples", "pool_size", "seq_len",
          "calib", "eval_text", "eval_windows", "seed", "round_to", "serve", "dtype")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    add_config_argument(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=float, default=None, help="fraction of parameters to remove (default 0.2)")
    target.add_argument("--target-params", default=None)
    p.add_argument("--trials", type=int, default=None, help="finished trials the study should hold (default 20; paper: 100)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for this run")
    p.add_argument("--sampler", default=None, choices=["tpe", "random", "both"], help="default tpe")
    p.add_argument("--n-samples", type=int, default=None, help="calibration samples per trial (default 10, as the paper)")
    p.add_argument("--pool-size", type=int, default=None, help="candidate samples to choose from (default 32)")
    p.add_argument("--seq-len", type=int, default=None, help="default 128")
    p.add_argument("--calib", default=None, help="candidate texts (default: embedded text)")
    p.add_argument("--eval-text", action="append", default=None,
                   help="text file(s) scored per trial (default: embedded held-out text)")
    p.add_argument("--eval-windows", type=int, default=None, help="default 16")
    p.add_argument("--seed", type=int, default=None)
    add_serve_argument(p)
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width; kept in best.yaml)")
    p.add_argument("--study", required=True, help="study directory (resumes if it exists)")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import search
    from llmsculpt.config import SearchConfig

    cfg = recipe_from_args(SearchConfig, args, **{name: getattr(args, name) for name in FIELDS})
    r = search(config=cfg, study=args.study, device=args.device, progress=True)
    print(f"best ppl {r.best_value:.2f} ({r.best_sampler}, trial {r.best_trial}); "
          f"{r.seconds_per_trial:.1f}s per trial; wrote {r.study / 'best.yaml'}")
    return 0
