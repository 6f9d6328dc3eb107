"""`sculpt export`: GGUF for llama.cpp (uniform and heterogeneous), a vLLM directory (the family's own
config, or the Nemotron-NAS layout for per-layer shapes), or a plain HF directory; the recipe is
written beside it (api/export.py).

A q8_0 GGUF quantises every matrix or is refused (one line naming the matrices whose row width is not a
multiple of 32); ``--allow-mixed`` keeps those f16 and warns instead."""

from __future__ import annotations

import argparse
import sys
import warnings

from llmsculpt.cli._common import add_config_argument, recipe_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model directory (or any --model accepted by prune)")
    add_config_argument(p)
    p.add_argument("--format", default=None, choices=["gguf", "vllm", "hf"], help="default gguf")
    p.add_argument("--out", required=True, help="output .gguf file or directory")
    p.add_argument("--dtype", default=None, help="GGUF tensor type: f16 (default), f32 or q8_0")
    p.add_argument("--allow-mixed", action="store_true", default=None,
                   help="q8_0: keep matrices whose row width is not a multiple of 32 in f16 (with a warning) "
                        "instead of refusing; re-pruning with --round-to 32 avoids them")
    p.add_argument("--overwrite", action="store_true")
    from llmsculpt.models.placement import DEVICE_HELP

    p.add_argument("--device", default="cpu", help=f"where the model is loaded to be written: {DEVICE_HELP} "
                                                   "(default cpu: the files are written from host memory)")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import export
    from llmsculpt.config import ExportConfig
    from llmsculpt.io.export_gguf import MixedQuantWarning

    cfg = recipe_from_args(ExportConfig, args, model=args.model, format=args.format, dtype=args.dtype,
                           allow_mixed=args.allow_mixed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MixedQuantWarning)
        line = export(config=cfg, out=args.out, overwrite=args.overwrite, device=args.device)
    for w in caught:  # ours as one plain line; anything else as Python would have shown it
        if issubclass(w.category, MixedQuantWarning):
            print(f"sculpt export: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(line)
    return 0
