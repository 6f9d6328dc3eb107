"""`sculpt eval`: perplexity on a text file (non-overlapping windows), params, a sample generation,
and multiple-choice / lm-eval tasks (``--tasks``, ``--mc-file``: llmsculpt/eval/tasks.py)."""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import (add_config_argument, add_model_argument, add_placement_arguments, emit_json,
                                   recipe_from_args)

FIELDS = {"model": "model", "text": "text_file", "seq_len": "seq_len", "batch_size": "batch_size",
          "max_windows": "max_windows", "generate": "generate", "max_new_tokens": "max_new_tokens", "tasks": "tasks",
          "include_path": "include_path", "mc_file": "mc_file", "num_fewshot": "num_fewshot", "limit": "limit",
          "dtype": "dtype"}  # flag -> EvalConfig field


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    add_config_argument(p)
    p.add_argument("--text", default=None, help="text file for perplexity")
    p.add_argument("--seq-len", type=int, default=None, help="window length for perplexity (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--max-windows", type=int, default=None, help="bound the number of windows scored")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="also greedy-generate from this prompt")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 32")
    p.add_argument("--json", action="store_true", help="print results as JSON (has a numeric 'ppl' key)")
    g = p.add_argument_group("benchmark tasks")
    g.add_argument("--tasks", default=None,
                   help="lm-eval tasks, comma-separated, e.g. arc_easy,piqa,hellaswag (needs llmsculpt[eval] and "
                        "network for hub datasets)")
    g.add_argument("--include-path", default=None, help="directory of local lm-eval task YAMLs")
    g.add_argument("--mc-file", action="append", default=None, metavar="PATH",
                   help="local multiple-choice task, JSONL or BIG-bench JSON; repeatable; needs no network")
    g.add_argument("--num-fewshot", type=int, default=None, help="solved examples in each prompt (default 0)")
    g.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import evaluate
    from llmsculpt.config import EvalConfig

    cfg = recipe_from_args(EvalConfig, args, **{field: getattr(args, flag) for flag, field in FIELDS.items()})
    result = evaluate(config=cfg, device=args.device)
    if args.json:
        emit_json(result)
    else:
        for key, value in result.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0
