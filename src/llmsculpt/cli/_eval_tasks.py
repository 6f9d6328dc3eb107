"""Task arguments of `sculpt eval`: lm-eval tasks (``--tasks``) and local multiple-choice files
(``--mc-file``, JSONL or BIG-bench JSON, scored offline by llmsculpt itself).

Results are ``{task: {metric: value}}``: for local files ``acc``, ``acc_norm`` and ``n``; for lm-eval
tasks the metric the pruning papers report for that task.
"""

from __future__ import annotations

import argparse

from llmsculpt.errors import SculptError


def add_eval_task_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmark tasks")
    g.add_argument("--tasks", default=None,
                   help="lm-eval tasks, comma-separated, e.g. arc_easy,piqa,hellaswag (needs llmsculpt[eval] and "
                        "network for hub datasets)")
    g.add_argument("--include-path", default=None, help="directory of local lm-eval task YAMLs")
    g.add_argument("--mc-file", action="append", default=[], metavar="PATH",
                   help="local multiple-choice task, JSONL or BIG-bench JSON; repeatable; needs no network")
    g.add_argument("--num-fewshot", type=int, default=0, help="solved examples in each prompt (default 0)")
    g.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")


def run_eval_tasks(args: argparse.Namespace, model, tokenizer) -> dict[str, dict[str, float]]:
    """Score every ``--mc-file`` and ``--tasks`` entry of ``args``; bad inputs fail before any scoring."""
    from llmsculpt.eval.multiple_choice import load_mc_task, score_mc

    if args.num_fewshot < 0:
        raise SculptError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.limit is not None and args.limit < 1:
        raise SculptError(f"--limit must be positive, got {args.limit}")
    names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if args.tasks is not None and not names:
        raise SculptError("--tasks is empty; give lm-eval task names like arc_easy,piqa")
    if names:
        from llmsculpt.errors import require

        require("lm_eval", extra="eval", feature="--tasks (lm-eval benchmarks)")
    batch_size = getattr(args, "batch_size", None) or 8
    tasks = [load_mc_task(path) for path in args.mc_file]
    results: dict[str, dict[str, float]] = {}
    for path, task in zip(args.mc_file, tasks):
        key = task.name if task.name not in results else str(path)
        r = score_mc(model, tokenizer, task, num_fewshot=args.num_fewshot, limit=args.limit, batch_size=batch_size)
        results[key] = {"acc": r.acc, "acc_norm": r.acc_norm, "n": r.n}
    if names:
        from llmsculpt.eval.lm_eval_adapter import run_lm_eval

        results.update(run_lm_eval(model, tokenizer, names, num_fewshot=args.num_fewshot, limit=args.limit,
                                   batch_size=batch_size, include_path=args.include_path))
    return results
