"""`sculpt bench-speed`: prefill/decode tokens/s, peak memory, parameters and FLOPs per token of a
model, and its ratios to a baseline (e.g. the original) measured in the same run on the same device.

    sculpt bench-speed --model pruned/ --baseline smollm2-135m --batch-sizes 1,8
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model to measure (directory, .gguf, built-in name)")
    p.add_argument("--baseline", default=None, help="model to compare with, e.g. the original")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per sequence (default 128)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy decode steps (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="runs per batch size; the best is kept (default 3)")
    p.add_argument("--json", action="store_true", help="print results and ratios as JSON")
    from llmsculpt.cli._common import add_placement_arguments

    add_placement_arguments(p)


def _batch_sizes(text: str) -> tuple[int, ...]:
    from llmsculpt.errors import SculptError

    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise SculptError(f"--batch-sizes must be positive integers like 1,8, got {text!r}")
    return sizes


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import bench_speed
    from llmsculpt.cli._common import emit_json, load_kwargs

    results = bench_speed(args.model, baseline=args.baseline, batch_sizes=_batch_sizes(args.batch_sizes),
                          prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                          **load_kwargs(args))
    ratios = results.pop("ratios", None)
    if args.json:
        out = {name: res.to_dict() for name, res in results.items()}
        out["sources"] = {"model": args.model, "baseline": args.baseline}
        if ratios:
            out["ratios"] = ratios
        emit_json(out)
        return 0
    _print_table(results, ratios, args)
    return 0


def _print_table(results: dict, ratios: dict | None, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    first = results["model"]
    title = f"speed on {first.device}: {first.prompt_len}-token prompts, {first.new_tokens} decode steps"
    table = Table(title=title)
    table.add_column("model", overflow="fold")  # long paths wrap; numbers never get cut
    for col in ("batch", "prefill tok/s", "decode tok/s", "peak MiB", "params", "GFLOPs/token"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, res in results.items():
        label = args.model if name == "model" else args.baseline
        for pt in res.points:
            table.add_row(
                label, str(pt.batch_size), f"{pt.prefill_tokens_per_s:,.0f}", f"{pt.decode_tokens_per_s:,.1f}",
                f"{res.weights_mb + pt.peak_extra_mb:,.0f}", f"{res.params:,}", f"{res.flops_per_token / 1e9:.3f}",
            )
    console = Console()
    console.print(table)
    if ratios:
        rt = Table(title=f"{args.model} / {args.baseline}")
        rt.add_column("ratio")
        rt.add_column("value", justify="right")
        for key, value in ratios.items():
            rt.add_row(key, f"{value:.3f}x")
        console.print(rt)
