"""`sculpt pretrain-prune`: EfficientLLM pruning-aware training to a parameter budget.

Resumable (``--resume`` continues from ``<out>.ckpt/``) and data-parallel on several processes:
``torchrun --standalone --nproc_per_node 2 -m llmsculpt.cli.main pretrain-prune ...`` (add ``--fsdp`` to
shard the training state).
"""

from __future__ import annotations

import argparse
import os

from llmsculpt.cli._common import (add_fsdp_argument, add_model_argument, add_placement_arguments, load_kwargs,
                                   note_single_process_fsdp)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    p.add_argument("--target-params", required=True, help="parameter budget, e.g. 60M")
    p.add_argument("--data", required=True, help="plain-text corpus")
    p.add_argument("--ratio", default="1:1", help="pruning:training steps per cycle (paper: 4:1, 2:1, 1:1, 1:9)")
    p.add_argument("--quantum", type=float, default=0.02, help="fraction of the original parameters per pruning step")
    p.add_argument("--metric", default="taylor", choices=["taylor", "fisher", "obc"])
    p.add_argument("--types", default="attention,mlp,stem", help="mini-group types that may be pruned")
    p.add_argument("--fixed-order", default=None, help="ablation: cycle these types instead of choosing, e.g. stem,attention,mlp")
    p.add_argument("--obs", action="store_true", help="second-order (OBS) weight update on each removal")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--continue-steps", type=int, default=0, help="training steps after the budget is met")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim, hidden) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints in <out>.ckpt/")
    p.add_argument("--resume", action="store_true", help="continue a killed run from <out>.ckpt/")
    add_fsdp_argument(p)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from llmsculpt.cli._common import cli_arguments
    from llmsculpt.config import parse_count
    from llmsculpt.io.files import dumps_json
    from llmsculpt.io.report import print_architecture
    from llmsculpt.io.save import check_output_dir, save_pruned
    from llmsculpt.config import PretrainPruneConfig
    from llmsculpt.methods.pruning_aware import plot_trajectory, pretrain_prune
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import architecture, count_params
    from llmsculpt.train.data import load_examples

    check_output_dir(args.out, overwrite=args.overwrite)
    note_single_process_fsdp(args)
    placement = load_kwargs(args, training="sculpt pretrain-prune")
    cfg = PretrainPruneConfig(
        target_params=parse_count(args.target_params), ratio=args.ratio, quantum=args.quantum, metric=args.metric,
        types=tuple(t.strip() for t in args.types.split(",")),
        fixed_order=tuple(t.strip() for t in args.fixed_order.split(",")) if args.fixed_order else None,
        obs=args.obs, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
        continue_steps=args.continue_steps, seed=args.seed, round_to=args.round_to,
    )
    loaded = load(args.model, **placement)
    examples, _ = load_examples(args.data, loaded.tokenizer, fmt="text", seq_len=args.seq_len)
    before, source = count_params(loaded.model), architecture(loaded.model)
    ckpt = f"{str(args.out).rstrip('/')}.ckpt"
    model, plan, log = pretrain_prune(loaded.model, loaded.tokenizer, examples, cfg, checkpoint_dir=ckpt,
                                      checkpoint_every=args.checkpoint_every, resume=args.resume, shard=args.fsdp)
    if int(os.environ.get("RANK", "0")) != 0:  # multi-process run: the main process saves
        return 0
    report = {"method": "pruning-aware", "params_before": before, "params_after": count_params(model),
              "original_architecture": source.to_dict(), "config": cli_arguments(args), "recipe": asdict(cfg)}

    def extras(directory):
        (directory / "trajectory.jsonl").write_text("".join(dumps_json(e, indent=None) + "\n" for e in log))
        import importlib.util

        if importlib.util.find_spec("matplotlib"):
            plot_trajectory(directory, log, before)

    save_pruned(model, loaded.tokenizer, args.out, plan=plan, report=report, overwrite=args.overwrite, after=extras)
    print_architecture(source, title="source")
    print_architecture(architecture(model), title="auto-designed")
    print(f"params {before:,} -> {count_params(model):,}; saved to {args.out}")
    return 0
