"""Argument helpers shared by commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmsculpt.errors import SculptError


def add_model_argument(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "--model",
        default=None,
        required=required,
        help="model: directory, .gguf file, hub id, or built-in name (default: smollm2-135m)",
    )


def read_text_file(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise SculptError(f"text file {path} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SculptError(f"cannot read {path} as UTF-8 text: {exc}") from exc
    if not text.strip():
        raise SculptError(f"text file {path} is empty")
    return text


def emit_json(obj: dict) -> None:
    json.dump(obj, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def add_fsdp_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fsdp", action="store_true",
                   help="with several processes (torchrun/accelerate launch): shard weights, gradients and optimiser "
                        "state (FSDP2) instead of DDP; the main process gathers whole weights to prune and checkpoint")


def note_single_process_fsdp(args: argparse.Namespace) -> None:
    """``--fsdp`` in a single process changes nothing: say so rather than ignore it silently."""
    from llmsculpt.train.distributed import world_size_from_env

    if args.fsdp and world_size_from_env() == 1:
        print("note: --fsdp has no effect in a single process; launch with torchrun --nproc_per_node N "
              "or accelerate launch", file=sys.stderr)
