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


def add_placement_arguments(p: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    """``--dtype`` and ``--device``, the same on every command (resolved by :func:`load_kwargs`)."""
    from llmsculpt.models.placement import DEVICE_HELP, DTYPE_CHOICES

    if dtype:
        p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                       help="precision of the weights throughout (auto: the checkpoint's own, bfloat16 for GGUF; "
                            "default float32)")
    p.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_HELP}")


def load_kwargs(args: argparse.Namespace, *, training: str | None = None) -> dict:
    """``dtype``/``device`` keywords for ``load()`` from :func:`add_placement_arguments`.

    ``training`` names a command that trains: its dtype is resolved now (``auto`` included) and
    anything but float32 is refused before a weight is loaded."""
    kw = {"dtype": getattr(args, "dtype", "float32"), "device": getattr(args, "device", "auto")}
    if training:
        from llmsculpt.models.placement import refuse_low_precision_training, source_dtype

        kw["dtype"] = source_dtype(getattr(args, "model", None), kw["dtype"])
        refuse_low_precision_training(kw["dtype"], training)
    return kw


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
