"""Argument helpers shared by commands."""

from __future__ import annotations

import argparse
import sys


def add_model_argument(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "--model",
        default=None,
        required=required,
        help="model: directory, .gguf file, hub id, or built-in name (default: smollm2-135m)",
    )


def read_text_file(path: str) -> str:
    from llmsculpt.io.files import read_text

    return read_text(path)


def emit_json(obj: dict) -> None:
    from llmsculpt.io.files import dumps_json

    sys.stdout.write(dumps_json(obj) + "\n")


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


def cli_arguments(args: argparse.Namespace) -> dict:
    """The command line as given (for reports), without argparse's private entries."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}
