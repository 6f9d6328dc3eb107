"""`sculpt search`: AdaPruner's Bayesian search (TPE) over calibration samples and the importance
mix; writes best.yaml for `sculpt prune --config`."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmsculpt.cli._common import add_model_argument, add_placement_arguments, load_kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=float, default=None, help="fraction of parameters to remove (default 0.2)")
    target.add_argument("--target-params", default=None)
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (paper: 100)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for this run")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "both"])
    p.add_argument("--n-samples", type=int, default=10, help="calibration samples per trial (paper: 10)")
    p.add_argument("--pool-size", type=int, default=32, help="candidate samples to choose from")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib", default=None, help="candidate texts (default: embedded text)")
    p.add_argument("--eval-text", action="append", default=[], help="text file(s) scored per trial (default: embedded held-out text)")
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width; kept in best.yaml)")
    p.add_argument("--study", required=True, help="study directory (resumes if it exists)")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.cli._common import read_text_file
    from llmsculpt.config import PruneConfig
    from llmsculpt.errors import SculptError, require
    from llmsculpt.models.loading import load
    from llmsculpt.search import outputs
    from llmsculpt.search.study import Objective, SearchSetup, run_study

    require("optuna", extra="search", feature="sculpt search")
    if args.trials < 1 or args.n_samples < 1 or args.pool_size < args.n_samples:
        raise SculptError("need --trials >= 1 and --pool-size >= --n-samples >= 1")
    cfg = PruneConfig(model=args.model, ratio=args.ratio, target_params=args.target_params, seed=args.seed,
                      round_to=args.round_to,
                      data={"calib": args.calib, "seq_len": args.seq_len, "n_samples": args.n_samples})
    if args.eval_text:
        texts = [read_text_file(p) for p in args.eval_text]
    else:
        from llmsculpt.calibration import default_documents

        texts = ["\n\n".join(default_documents("heldout"))]
    from llmsculpt.io.save import check_writable

    study_dir = check_writable(args.study)
    loaded = load(args.model, **load_kwargs(args))
    setup = SearchSetup(loaded.model, loaded.tokenizer, cfg, texts, pool_size=args.pool_size,
                        n_samples=args.n_samples, eval_windows=args.eval_windows)
    print(f"computing per-sample importance for {args.pool_size} candidates...")
    objective = Objective(setup)
    print(f"cached in {objective.cache_seconds:.1f}s")
    studies = {}
    for sampler in (["tpe", "random"] if args.sampler == "both" else [args.sampler]):
        studies[sampler] = run_study(objective, study_dir, sampler=sampler, trials=args.trials, timeout=args.timeout, seed=args.seed)
        outputs.write_trials(studies[sampler], study_dir, sampler)
    best_tag, best = min(((k, s) for k, s in studies.items() if outputs.completed(s)), key=lambda kv: kv[1].best_value,
                         default=(None, None))
    if best is None:
        raise SculptError("no trial finished; see trials_*.json for the failures")
    objective.recipe(best.best_params).to_yaml(study_dir / "best.yaml")
    import importlib.util

    if importlib.util.find_spec("matplotlib"):
        outputs.plot_history(studies, study_dir)
        outputs.plot_importances(best, study_dir)
    secs = [t.user_attrs.get("seconds") for s in studies.values() for t in s.trials if t.user_attrs.get("seconds")]
    print(f"best ppl {best.best_value:.2f} ({best_tag}, trial {best.best_trial.number}); "
          f"{sum(secs) / max(1, len(secs)):.1f}s per trial; wrote {study_dir / 'best.yaml'}")
    return 0
