"""Adapter to lm-evaluation-harness (optional extra ``[eval]``) for in-memory models.

The model object itself is handed to lm-eval's ``HFLM``, so pruned and heterogeneous models are
evaluated as they are: no save, no reload, no remote code. Hub tasks (``arc_easy``...) download
their datasets; offline, point ``include_path`` at task YAMLs whose dataset is a local file::

    task: my_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: /data/my_mc.jsonl}}
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{context}}"
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{label}}"
    metric_list: [{metric: acc}, {metric: acc_norm}]

Example:
    >>> run_lm_eval(model, tokenizer, ["arc_easy", "piqa"], limit=200)  # doctest: +SKIP
    {'arc_easy': {'acc_norm': 0.58}, 'piqa': {'acc_norm': 0.66}}
"""

from __future__ import annotations

from llmsculpt.errors import SculptError, require

# the metric the pruning papers (LLM-Pruner, SliceGPT, Adapt-Pruner...) report per task:
# acc_norm where answers differ in length, acc where they do not
PAPER_METRIC = {
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "openbookqa": "acc_norm",
    "piqa": "acc_norm",
    "boolq": "acc",
    "winogrande": "acc",
}


def paper_metric(task: str, available: dict[str, float]) -> str:
    """The headline metric of ``task``: the papers' choice, else acc_norm, acc, or the first one."""
    for name in (PAPER_METRIC.get(task), "acc_norm", "acc"):
        if name in available:
            return name
    return next(iter(available))


def _numeric_metrics(raw: dict) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}`` -> ``{"acc": 0.5}``."""
    return {
        key.split(",")[0]: float(value) for key, value in raw.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in key
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
) -> dict[str, dict[str, float]]:
    """Run lm-eval ``tasks`` on the in-memory ``model``; returns ``{task: {metric: value}}`` with the
    metric the pruning literature reports for that task (see ``PAPER_METRIC``).

    ``limit`` bounds the examples per task; ``include_path`` adds a directory of task YAMLs.
    """
    lm_eval = require("lm_eval", extra="eval", feature="lm-eval benchmarks")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise SculptError("no lm-eval task given; name some, e.g. arc_easy,piqa")
    manager = None
    if include_path:  # indexing lm-eval's own ~15k task configs takes ~15 s: skip it when not needed
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not all(t in manager.all_tasks for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SculptError(
            f"lm-eval does not know task(s) {', '.join(unknown)}; check the names "
            "(`lm-eval ls tasks`) or pass the directory of your task YAMLs as include_path"
        )
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            bootstrap_iters=0, log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except (ConnectionError, OSError) as exc:
        raise SculptError(
            f"lm-eval could not load the data of {', '.join(tasks)} ({exc}); hub datasets need network "
            "access: use a local task YAML via include_path, or a local file with --mc-file"
        ) from exc
    except (KeyError, ValueError) as exc:
        raise SculptError(f"lm-eval could not run {', '.join(tasks)}: {exc}") from exc
    finally:
        model.train(was_training)
    results = {}
    for task, raw in out["results"].items():
        metrics = _numeric_metrics(raw)
        if metrics:
            name = paper_metric(task, metrics)
            results[task] = {name: metrics[name]}
    return results
