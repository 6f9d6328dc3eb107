"""`sculpt accel`: Adapt-Accel, interleaved pruning and recovery training, resumable.

Data-parallel on several processes: ``torchrun --nproc_per_node 2 -m llmsculpt.cli.main accel ...``
(CPU, gloo) or ``accelerate launch --multi_gpu --num_processes N -m llmsculpt.cli.main accel ...``;
add ``--fsdp`` (or launch with an accelerate FSDP config) to shard the training state instead.
"""

from __future__ import annotations

import argparse
import os

from llmsculpt.cli._common import (add_fsdp_argument, add_model_argument, add_placement_arguments, load_kwargs,
                                   note_single_process_fsdp)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-params", default=None, help="parameter count to reach, e.g. 90M")
    target.add_argument("--ratio", type=float, default=None, help="fraction of parameters to remove")
    p.add_argument("--data", required=True, help="training data file")
    p.add_argument("--format", default="text", choices=["text", "alpaca", "chat"])
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records (count reported) instead of failing")
    p.add_argument("--phases", type=int, default=4, help="pruning/training phases (paper: 20)")
    p.add_argument("--data-allocation", default="linear", choices=["linear", "constant", "cosine"])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--min-lr", type=float, default=2e-6)
    p.add_argument("--schedule", default="wsd", choices=["wsd", "cosine"])
    p.add_argument("--mode", default="full", choices=["full", "lora"])
    p.add_argument("--distill", action="store_true", help="distil from the original model (KL on logits)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--prune-steps", type=int, default=2, help="Adapt-Pruner steps per phase")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--optimizer-state", default="reset", choices=["reset", "carry"],
                   help="after each pruning: new AdamW (reset) or keep the surviving moments (carry)")
    add_fsdp_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt/")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.config import parse_count
    from llmsculpt.errors import SculptError
    from dataclasses import asdict

    from llmsculpt.cli._common import cli_arguments
    from llmsculpt.io.save import check_output_dir, save_pruned
    from llmsculpt.config import AccelConfig
    from llmsculpt.methods.adapt_accel import run_accel
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import count_params
    from llmsculpt.train.data import load_examples

    check_output_dir(args.out, overwrite=args.overwrite)
    note_single_process_fsdp(args)
    loaded = load(args.model, **load_kwargs(args, training="sculpt accel"))
    model, tok = loaded.model, loaded.tokenizer
    before = count_params(model)
    if args.ratio is not None:
        if not 0 < args.ratio < 1:
            raise SculptError(f"ratio must be in (0, 1), got {args.ratio}")
        target = round(before * (1 - args.ratio))
    else:
        target = parse_count(args.target_params)
    examples, bad = load_examples(args.data, tok, fmt=args.format, seq_len=args.seq_len, skip_bad=args.skip_bad)
    if bad:
        print(f"skipped {bad} bad records")
    cfg = AccelConfig(
        target_params=target, phases=args.phases, data_allocation=args.data_allocation, batch_size=args.batch_size,
        lr=args.lr, min_lr=args.min_lr, schedule=args.schedule, mode=args.mode, distill=args.distill,
        temperature=args.temperature, prune_steps=args.prune_steps, checkpoint_every=args.checkpoint_every, seed=args.seed,
        optimizer_state=args.optimizer_state, round_to=args.round_to,
    )
    ckpt = f"{str(args.out).rstrip('/')}.ckpt"
    model, plan, log = run_accel(model, tok, examples, cfg, checkpoint_dir=ckpt, resume=args.resume, shard=args.fsdp)
    if int(os.environ.get("RANK", "0")) != 0:  # multi-process run: the main process saves
        return 0
    report = {"method": "adapt-accel", "params_before": before, "params_after": count_params(model),
              "config": cli_arguments(args) | {"target_params": target}, "recipe": asdict(cfg), "log": log}

    def draw(directory):
        import importlib.util

        if importlib.util.find_spec("matplotlib"):
            from llmsculpt.io.plots import plot_training

            plot_training(directory, log)

    save_pruned(model, tok, args.out, plan=plan, report=report, overwrite=args.overwrite, after=draw)
    print(f"params {before:,} -> {count_params(model):,}; {len(log)} steps; final loss {log[-1]['loss']:.3f}; saved to {args.out}")
    return 0
