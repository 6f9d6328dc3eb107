"""Argument helpers shared by commands: the model, placement, recipe (``--config``) and output flags,
and the one way a command turns its flags into a recipe (the file's values, overridden by the flags
actually given)."""

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


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="RECIPE.yaml",
                   help="recipe file (e.g. a saved <out>/recipe.yaml); flags given here override its values")


def add_placement_arguments(p: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    """``--dtype`` and ``--device``, the same on every command."""
    from llmsculpt.models.placement import DEVICE_HELP, DTYPE_CHOICES

    if dtype:
        p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                       help="precision of the weights throughout (default auto: the checkpoint's own, "
                            "bfloat16 for GGUF)")
    p.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_HELP}")


def add_budget_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", default=None, metavar="SIZE",
                   help="memory per device, e.g. 24GB: a run predicted not to fit (sculpt estimate) is refused before "
                        "loading, and the measuring passes use a micro-batch that fits (default: none on CPU; on CUDA "
                        "the device's free memory)")


def add_serve_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serve", default=None, choices=["any", "uniform", "vllm", "llamacpp"],
                   help="plan only shapes this runtime serves exactly: uniform (a plain family checkpoint), vllm "
                        "(export --format vllm: one query-head count, per-layer MLP widths), llamacpp (GGUF deci; "
                        "--round-to defaults to 32); default any")


def add_output_arguments(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue a killed run from <out>.ckpt/")


def add_fsdp_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fsdp", action="store_true",
                   help="with several processes (torchrun/accelerate launch): shard weights, gradients and optimiser "
                        "state (FSDP2) instead of DDP; the main process gathers whole weights to prune and checkpoint")


def recipe_from_args(cls, args: argparse.Namespace, **flags):
    """The recipe of a command: ``--config`` (or the defaults), with every flag given (not None) laid over it.
    An unknown key in the file is a one-line error naming it, before anything is loaded or written."""
    if getattr(args, "config", None):
        return cls.from_yaml(args.config).with_overrides(**flags)
    return cls.from_flags(**flags)


def load_kwargs(args: argparse.Namespace) -> dict:
    """``dtype``/``device`` keywords for ``load()`` from :func:`add_placement_arguments`."""
    return {"dtype": getattr(args, "dtype", None) or "auto", "device": getattr(args, "device", "auto")}


def emit_json(obj: dict) -> None:
    from llmsculpt.io.files import dumps_json

    sys.stdout.write(dumps_json(obj) + "\n")
