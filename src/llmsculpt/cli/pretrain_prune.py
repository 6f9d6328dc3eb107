"""`sculpt pretrain-prune`: EfficientLLM pruning-aware training to a parameter budget.

Resumable (``--resume`` continues from ``<out>.ckpt/``) and data-parallel on several processes:
``torchrun --standalone --nproc_per_node 2 -m llmsculpt.cli.main pretrain-prune ...`` (add ``--fsdp`` to
shard the training state). ``--cycle 2:1`` is pruning:training steps; ``--ratio`` is not a flag here
(in every command it means the fraction of parameters removed; this one takes ``--target-params``).
"""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import (add_budget_argument, add_config_argument, add_fsdp_argument, add_model_argument,
                                   add_output_arguments, add_placement_arguments, add_serve_argument,
                                   recipe_from_args)

FIELDS = ("model", "target_params", "data", "cycle", "quantum", "metric", "types", "fixed_order", "obs", "seq_len",
          "batch_size", "lr", "min_lr", "continue_steps", "seed", "round_to", "serve", "checkpoint_every", "dtype", "budget")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    add_budget_argument(p)
    add_config_argument(p)
    p.add_argument("--target-params", default=None, help="parameter budget, e.g. 60M")
    p.add_argument("--data", default=None, help="plain-text corpus")
    p.add_argument("--cycle", default=None, help="pruning:training steps per cycle (default 1:1; paper: 4:1, 2:1, 1:1, 1:9)")
    p.add_argument("--quantum", type=float, default=None,
                   help="fraction of the original parameters per pruning step (default 0.02)")
    p.add_argument("--metric", default=None, choices=["taylor", "fisher", "obc"])
    p.add_argument("--types", default=None, help="mini-group types that may be pruned (default attention,mlp,stem)")
    p.add_argument("--fixed-order", default=None, help="ablation: cycle these types instead of choosing, e.g. stem,attention,mlp")
    p.add_argument("--obs", action="store_true", default=None, help="second-order (OBS) weight update on each removal")
    p.add_argument("--seq-len", type=int, default=None, help="default 256")
    p.add_argument("--batch-size", type=int, default=None, help="default 4")
    p.add_argument("--lr", type=float, default=None, help="default 1e-4")
    p.add_argument("--min-lr", type=float, default=None, help="default: lr / 10")
    p.add_argument("--continue-steps", type=int, default=None, help="training steps after the budget is met (default 0)")
    p.add_argument("--seed", type=int, default=None)
    add_serve_argument(p)
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim, hidden) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints in <out>.ckpt/ (default 50)")
    add_fsdp_argument(p)
    add_output_arguments(p, resume=True)


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import pretrain_prune
    from llmsculpt.config import PretrainPruneConfig
    from llmsculpt.io.report import print_architecture

    flags = {name: getattr(args, name) for name in FIELDS}
    if args.lr is not None and args.min_lr is None:
        flags["min_lr"] = args.lr / 10
    cfg = recipe_from_args(PretrainPruneConfig, args, **flags)
    r = pretrain_prune(config=cfg, out=args.out, overwrite=args.overwrite, resume=args.resume, fsdp=args.fsdp,
                       device=args.device)
    if r.out is not None:
        from llmsculpt.structures.shapes import architecture

        print_architecture(r.source, title="source")
        print_architecture(architecture(r.model), title="auto-designed")
        print(f"params {r.report['params_before']:,} -> {r.report['params_after']:,}; saved to {args.out}")
    return 0
