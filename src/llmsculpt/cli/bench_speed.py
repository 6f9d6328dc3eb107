"""`sculpt bench-speed`: prefill/decode tokens/s, memory, params and FLOPs of a model, and the
ratio to a baseline (e.g. the original) measured in the same run."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model to measure (directory, .gguf, built-in name)")
    p.add_argument("--baseline", default=None, help="model to compare with, e.g. the original")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.cli._common import emit_json
    from llmsculpt.errors import SculptError
    from llmsculpt.eval.speed import compare_speed, measure_speed
    from llmsculpt.models.loading import load

    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise SculptError(f"--batch-sizes must be integers like 1,8, got {args.batch_sizes!r}") from None
    if min(sizes) < 1 or args.prompt_len < 1 or args.new_tokens < 1:
        raise SculptError("batch sizes, --prompt-len and --new-tokens must be positive")
    kw = dict(batch_sizes=sizes, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats)
    results = {"model": measure_speed(load(args.model).model, **kw)}
    if args.baseline:
        results["baseline"] = measure_speed(load(args.baseline).model, **kw)
    if args.json:
        out = {k: v.to_dict() for k, v in results.items()}
        if args.baseline:
            out["ratios"] = compare_speed(results["model"], results["baseline"])
        emit_json(out)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="speed")
    for col in ("model", "batch", "prefill tok/s", "decode tok/s", "params", "GFLOPs/token"):
        table.add_column(col, justify="right")
    for name, res in results.items():
        for pt in res.points:
            table.add_row(name, str(pt.batch_size), f"{pt.prefill_tokens_per_s:,.0f}", f"{pt.decode_tokens_per_s:,.1f}",
                          f"{res.params:,}", f"{res.flops_per_token / 1e9:.3f}")
    console = Console()
    console.print(table)
    if args.baseline:
        for key, value in compare_speed(results["model"], results["baseline"]).items():
            console.print(f"{key}: {value:.2f}x")
    return 0
