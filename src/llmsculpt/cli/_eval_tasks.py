"""Task arguments of `sculpt eval`: lm-eval tasks and local multiple-choice files."""

from __future__ import annotations

import argparse


def add_eval_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="lm-eval tasks, e.g. arc_easy,piqa,hellaswag (needs llmsculpt[eval])")
    p.add_argument("--include-path", default=None, help="directory of local lm-eval task YAMLs")
    p.add_argument("--mc-file", action="append", default=[], help="local multiple-choice task: JSONL or BIG-bench JSON (repeatable)")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="examples per task")


def run_eval_tasks(args: argparse.Namespace, model, tokenizer) -> dict:
    from llmsculpt.eval.multiple_choice import load_mc_task, score_mc

    results: dict = {}
    tasks = [load_mc_task(path) for path in args.mc_file]  # bad files fail before any scoring
    for task in tasks:
        r = score_mc(model, tokenizer, task, num_fewshot=args.num_fewshot, limit=args.limit)
        results[task.name] = {"acc": r.acc, "acc_norm": r.acc_norm, "n": r.n}
    if args.tasks:
        from llmsculpt.eval.lm_eval_adapter import run_lm_eval

        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        results.update(run_lm_eval(model, tokenizer, names, num_fewshot=args.num_fewshot, limit=args.limit,
                                   include_path=args.include_path))
    return results
