"""Benchmark tasks of ``evaluate``: lm-eval tasks and local multiple-choice files (JSONL or BIG-bench
JSON, scored offline by llmsculpt itself).

Results are ``{task: {metric: value}}``: for local files ``acc``, ``acc_norm`` and ``n``; for lm-eval
tasks the metric the pruning papers report for that task.
"""

from __future__ import annotations

from llmsculpt.config import EvalConfig


def check_tasks(cfg: EvalConfig) -> list[str]:
    """The lm-eval task names; bad task arguments fail here, before a model is loaded."""
    names = cfg.task_names()
    if names:
        from llmsculpt.errors import require

        require("lm_eval", extra="eval", feature="--tasks (lm-eval benchmarks)")
    return names


def score_tasks(cfg: EvalConfig, model, tokenizer) -> dict[str, dict[str, float]]:
    """Score every ``mc_file`` and ``tasks`` entry of ``cfg``; bad files fail before any scoring."""
    from llmsculpt.eval.multiple_choice import load_mc_task, score_mc

    names = check_tasks(cfg)
    tasks = [load_mc_task(path) for path in cfg.mc_file]
    results: dict[str, dict[str, float]] = {}
    for path, task in zip(cfg.mc_file, tasks):
        key = task.name if task.name not in results else str(path)
        r = score_mc(model, tokenizer, task, num_fewshot=cfg.num_fewshot, limit=cfg.limit, batch_size=cfg.batch_size)
        results[key] = {"acc": r.acc, "acc_norm": r.acc_norm, "n": r.n}
    if names:
        from llmsculpt.eval.lm_eval_adapter import run_lm_eval

        results.update(run_lm_eval(model, tokenizer, names, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                                   batch_size=cfg.batch_size, include_path=cfg.include_path))
    return results
