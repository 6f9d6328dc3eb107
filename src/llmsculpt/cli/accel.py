"""`sculpt accel`: Adapt-Accel, interleaved pruning and recovery training, resumable.

Data-parallel on several processes: ``torchrun --nproc_per_node 2 -m llmsculpt.cli.main accel ...``
(CPU, gloo) or ``accelerate launch --multi_gpu --num_processes N -m llmsculpt.cli.main accel ...``;
add ``--fsdp`` (or launch with an accelerate FSDP config) to shard the training state instead.
"""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import (add_budget_argument, add_config_argument, add_fsdp_argument, add_model_argument,
                                   add_output_arguments, add_placement_arguments, add_serve_argument,
                                   recipe_from_args)

# flag -> recipe field (AccelConfig), all None unless given, so a --config file's values stand
FIELDS = ("model", "target_params", "ratio", "data", "format", "skip_bad", "phases", "data_allocation", "seq_len",
          "batch_size", "lr", "min_lr", "schedule", "mode", "distill", "temperature", "prune_steps",
          "checkpoint_every", "optimizer_state", "seed", "round_to", "serve", "dtype", "budget")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    add_budget_argument(p)
    add_config_argument(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-params", default=None, help="parameter count to reach, e.g. 90M")
    target.add_argument("--ratio", type=float, default=None, help="fraction of parameters to remove")
    p.add_argument("--data", default=None, help="training data file")
    p.add_argument("--format", default=None, choices=["text", "alpaca", "chat"], help="data format (default text)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip malformed records (count reported) instead of failing")
    p.add_argument("--phases", type=int, default=None, help="pruning/training phases (default 4; paper: 20)")
    p.add_argument("--data-allocation", default=None, choices=["linear", "constant", "cosine"])
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default 256)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4")
    p.add_argument("--lr", type=float, default=None, help="default 2e-5")
    p.add_argument("--min-lr", type=float, default=None, help="default 2e-6")
    p.add_argument("--schedule", default=None, choices=["wsd", "cosine"])
    p.add_argument("--mode", default=None, choices=["full", "lora"])
    p.add_argument("--distill", action="store_true", default=None, help="distil from the original model (KL on logits)")
    p.add_argument("--temperature", type=float, default=None, help="distillation temperature (default 2)")
    p.add_argument("--prune-steps", type=int, default=None, help="Adapt-Pruner steps per phase (default 2)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 50)")
    p.add_argument("--optimizer-state", default=None, choices=["reset", "carry"],
                   help="after each pruning: new AdamW (reset, default) or keep the surviving moments (carry)")
    add_fsdp_argument(p)
    p.add_argument("--seed", type=int, default=None)
    add_serve_argument(p)
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width)")
    add_output_arguments(p, resume=True)


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import accel
    from llmsculpt.config import AccelConfig

    cfg = recipe_from_args(AccelConfig, args, **{name: getattr(args, name) for name in FIELDS})
    r = accel(config=cfg, out=args.out, overwrite=args.overwrite, resume=args.resume, fsdp=args.fsdp,
              device=args.device)
    if r.out is not None:
        print(f"params {r.report['params_before']:,} -> {r.report['params_after']:,}; {len(r.log)} steps; "
              f"final loss {r.log[-1]['loss']:.3f}; saved to {args.out}")
    return 0
