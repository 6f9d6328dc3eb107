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
    from llmsculpt.cli._common import emit_json, load_kwargs
    from llmsculpt.io.files import read_json
    from llmsculpt.io.report import print_architecture
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import architecture

    loaded = load(args.model, **{**load_kwargs(args), "device": "cpu" if args.device == "auto" else args.device})
    arch = architecture(loaded.model)
    report_path = Path(args.model) / "sculpt_report.json"
    report = read_json(report_path, what="report") if report_path.is_file() else {}
    if args.json:
        emit_json({"architecture": arch.to_dict(), "params": arch.param_count(), "report": report})
    else:
        print_architecture(arch, title=str(args.model))
        if report:
            print(f"method {report.get('method')}: {report.get('params_before', 0):,} -> {report.get('params_after', 0):,} params")
    if args.plot:
        from llmsculpt.io.plots import plot_report

        for path in plot_report(Path(args.model), arch, report):
            print(f"wrote {path}")
    return 0
