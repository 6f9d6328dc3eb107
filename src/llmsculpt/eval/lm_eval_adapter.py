"""Adapter to lm-evaluation-harness (optional extra ``[eval]``) for in-memory models, pruned and
heterogeneous ones included: the model object is handed to lm-eval's HFLM, so no reload and no
remote code is involved. Hub tasks need network; local tasks work through ``include_path``.
"""

from __future__ import annotations

from llmsculpt.errors import SculptError, require

# the metric the pruning papers report per task (acc_norm where answer length varies)
PAPER_METRIC = {
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "openbookqa": "acc_norm",
    "piqa": "acc_norm",
    "boolq": "acc",
    "winogrande": "acc",
}


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
    seed: int = 0,
) -> dict[str, dict]:
    """Run lm-eval ``tasks`` on ``model``; returns {task: {"metric": name, "value": v, "all": {...}}}."""
    lm_eval = require("lm_eval", extra="eval", feature="lm-eval benchmarks")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except (KeyError, ValueError) as exc:
        raise SculptError(f"lm-eval could not run tasks {tasks}: {exc}") from exc
    results = {}
    for task, metrics in out["results"].items():
        clean = {
            k.split(",")[0]: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and "stderr" not in k and not k.startswith("sample_len")
        }
        name = PAPER_METRIC.get(task, "acc_norm" if "acc_norm" in clean else "acc")
        if name not in clean and clean:
            name = next(iter(clean))
        results[task] = {"metric": name, "value": clean.get(name), "all": clean}
    return results
