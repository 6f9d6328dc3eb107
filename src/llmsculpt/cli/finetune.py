"""`sculpt finetune`: recover a pruned model with LoRA (default, merged before saving) or full training."""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import (add_config_argument, add_model_argument, add_output_arguments,
                                   add_placement_arguments, recipe_from_args)

FIELDS = ("model", "data", "format", "skip_bad", "mode", "lora_r", "lora_alpha", "epochs", "lr", "min_lr",
          "batch_size", "grad_accum", "gradient_checkpointing", "seq_len", "seed", "dtype")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    add_config_argument(p)
    p.add_argument("--data", default=None, help="training data file")
    p.add_argument("--format", default=None, choices=["text", "alpaca", "chat"], help="data format (default alpaca)")
    p.add_argument("--skip-bad", action="store_true", default=None)
    p.add_argument("--mode", default=None, choices=["lora", "full"], help="default lora")
    p.add_argument("--lora-r", type=int, default=None, help="default 8")
    p.add_argument("--lora-alpha", type=int, default=None, help="default 16")
    p.add_argument("--epochs", type=int, default=None, help="default 2")
    p.add_argument("--lr", type=float, default=None, help="default 1e-4")
    p.add_argument("--min-lr", type=float, default=None, help="default: lr / 10")
    p.add_argument("--batch-size", type=int, default=None, help="default 4")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimisation step (default 1)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward: less memory, ~30%% more compute")
    p.add_argument("--seq-len", type=int, default=None, help="default 256")
    p.add_argument("--seed", type=int, default=None)
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import finetune
    from llmsculpt.config import FinetuneConfig
    from llmsculpt.errors import SculptError

    cfg = recipe_from_args(FinetuneConfig, args, **{name: getattr(args, name) for name in FIELDS})
    if cfg.model is None or cfg.data is None:
        raise SculptError("finetune needs --model and --data (or both in --config)")
    r = finetune(config=cfg, out=args.out, overwrite=args.overwrite, device=args.device)
    if r.out is not None:
        print(f"fine-tuned {len(r.log)} steps, final loss {r.log[-1]['loss']:.3f}; saved to {args.out}")
    return 0
