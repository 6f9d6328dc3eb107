"""`sculpt inspect DIR`: per-layer table (heads, K/V heads, MLP width, params) of a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (or any --model accepted by prune)")
    p.add_argument("--json", action="store_true", help="print the architecture as JSON")
    p.add_argument("--plot", action="store_true", help="write per-layer plots next to the model (needs matplotlib)")
    from llmsculpt.cli._common import add_placement_arguments

    add_placement_arguments(p)


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import inspect
    from llmsculpt.cli._common import emit_json, load_kwargs
    from llmsculpt.io.report import print_architecture

    info = inspect(args.model, **load_kwargs(args))
    if args.json:
        emit_json(info.to_dict())
    else:
        print_architecture(info.architecture, title=str(args.model))
        report = info.report
        if report:
            print(f"method {report.get('method')}: {report.get('params_before', 0):,} -> {report.get('params_after', 0):,} params")
    if args.plot:
        from llmsculpt.io.plots import plot_report

        for path in plot_report(Path(args.model), info.architecture, info.report):
            print(f"wrote {path}")
    return 0
