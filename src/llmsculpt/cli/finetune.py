"""`sculpt finetune`: recover a pruned model with LoRA (default, merged before saving) or full training."""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import add_model_argument, add_placement_arguments, load_kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, required=True)
    add_placement_arguments(p)
    p.add_argument("--data", required=True, help="training data file")
    p.add_argument("--format", default="alpaca", choices=["text", "alpaca", "chat"])
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--mode", default="lora", choices=["lora", "full"])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmsculpt.cli._common import cli_arguments
    from llmsculpt.errors import SculptError
    from llmsculpt.io.files import read_json
    from llmsculpt.io.save import check_output_dir, save_pruned
    from llmsculpt.models.loading import load
    from llmsculpt.plan import Plan
    from llmsculpt.train.data import load_examples
    from llmsculpt.train.finetune import finetune

    if args.epochs < 1:
        raise SculptError("--epochs must be >= 1")
    check_output_dir(args.out, overwrite=args.overwrite)
    loaded = load(args.model, **load_kwargs(args, training="sculpt finetune"))
    examples, bad = load_examples(args.data, loaded.tokenizer, fmt=args.format, seq_len=args.seq_len, skip_bad=args.skip_bad)
    src = Path(str(args.model))  # what the output carries over, read before any training
    plan = Plan.load(src / "plan.json") if (src / "plan.json").is_file() else None
    prior = read_json(src / "sculpt_report.json", what="report") if (src / "sculpt_report.json").is_file() else {}
    model, log = finetune(loaded.model, loaded.tokenizer, examples, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, min_lr=args.lr / 10, lora=args.mode == "lora", lora_r=args.lora_r,
                          lora_alpha=args.lora_alpha, seed=args.seed)
    report = {**prior, "finetune": {"mode": args.mode, "epochs": args.epochs, "lr": args.lr, "skipped": bad, "log": log,
                                       "recipe": cli_arguments(args)}}
    save_pruned(model, loaded.tokenizer, args.out, plan=plan, report=report, overwrite=args.overwrite)
    print(f"fine-tuned {len(log)} steps, final loss {log[-1]['loss']:.3f}; saved to {args.out}")
    return 0
