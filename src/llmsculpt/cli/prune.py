"""`sculpt prune`: prune a model to a target size and save it (model, plan, report, recipe.yaml)."""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import (add_budget_argument, add_config_argument, add_model_argument,
                                   add_placement_arguments, add_serve_argument, emit_json, recipe_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    add_budget_argument(p)
    add_config_argument(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=float, default=None, help="fraction of all parameters to remove (default 0.2)")
    target.add_argument("--target-params", default=None, help="parameter count to reach, e.g. 90M")
    p.add_argument("--method", default=None, help="pruning method (default: adaptive); see --list-methods")
    p.add_argument("--metric", default=None, help="importance metric: taylor, taylor_vector, fisher, taylor_mix, l1, l2, wanda")
    p.add_argument("--aggregation", default=None, choices=["sum", "mean", "max", "prod", "last"])
    p.add_argument("--layers", default=None, help="layers that may be pruned, e.g. 4-29 (default: all)")
    p.add_argument("--attn-unit", default=None, choices=["kv", "head"], help="remove whole K/V groups or query heads")
    p.add_argument("--split", default=None, choices=["proportional", "importance"],
                   help="split a layer's sparsity between attention and MLP proportionally, or by importance per parameter")
    p.add_argument("--no-attention", dest="attention", action="store_const", const=False, default=None,
                   help="do not prune attention")
    p.add_argument("--no-mlp", dest="mlp", action="store_const", const=False, default=None, help="do not prune MLP channels")
    p.add_argument("--hidden", nargs="?", type=float, const=1.0, default=None, metavar="RATE",
                   help="also prune hidden (stem) channels: embedding, norms, every layer's in/out projections and "
                        "lm_head; the hidden width loses RATE × the layers' sparsity (--hidden alone: RATE 1, the "
                        "same fraction as heads and MLP channels). uniform, magnitude, wanda-sp, adaptive")
    p.add_argument("--calib", default=None, help="calibration text/JSONL file or dataset (default: embedded text)")
    p.add_argument("--n-samples", type=int, default=None, help="calibration samples (default 10)")
    p.add_argument("--seq-len", type=int, default=None, help="calibration sample length (default 128)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="pruned widths (MLP, query heads × head_dim) are multiples of N; "
                        "32 lets a q8_0 GGUF export quantise every weight (default 1: any width)")
    p.add_argument("--layer-by-layer", nargs="?", const=True, default=None, type=_layer_mode, metavar="auto",
                   help="one decoder layer resident at a time (magnitude, wanda-sp, flap, shortgpt): a safetensors "
                        "checkpoint is read and written layer by layer; 'auto': only when the whole model would not fit")
    add_serve_argument(p)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--eval-text", default=None, help="text file for perplexity before/after (default: held-out part of the embedded text)")
    p.add_argument("--eval-windows", type=int, default=40, help="windows scored for that perplexity (default 40)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after perplexity")
    p.add_argument("--out", required=False, default=None, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots next to the model")
    p.add_argument("--dry-run", action="store_true", help="decide and print the plan summary; no surgery, nothing written")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--list-methods", action="store_true", help="list pruning methods and exit")


def _layer_mode(value: str):
    if value != "auto":
        raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {value!r}")
    return value


def build_config(args: argparse.Namespace):
    """The effective prune recipe: ``--config`` (or the defaults), the flags given, then ``--option``s."""
    import yaml

    from llmsculpt.config import PruneConfig
    from llmsculpt.errors import SculptError

    names = ("model", "ratio", "target_params", "method", "metric", "aggregation", "layers", "attn_unit", "split",
             "seed", "round_to", "serve", "dtype", "budget", "attention", "mlp", "calib", "n_samples", "seq_len", "hidden",
             "layer_by_layer")
    cfg = recipe_from_args(PruneConfig, args, **{n: getattr(args, n) for n in names})
    options = {}
    for item in args.option:
        if "=" not in item:
            raise SculptError(f"--option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(value)
    return cfg.with_overrides(options={**cfg.options, **options}) if options else cfg


def run(args: argparse.Namespace) -> int:
    from llmsculpt.api import prune
    from llmsculpt.api._common import has_matplotlib
    from llmsculpt.errors import SculptError

    if args.list_methods:
        from llmsculpt.methods import method_names

        print("\n".join(method_names()))
        return 0
    if not args.out and not args.dry_run:
        raise SculptError("--out DIR is required (or use --dry-run)")
    cfg = build_config(args)
    eval_text = None
    if args.eval_text:
        from llmsculpt.io.files import read_text

        eval_text = read_text(args.eval_text)
    elif not args.no_eval and not args.dry_run:
        from llmsculpt.calibration import default_documents

        eval_text = "\n\n".join(default_documents("heldout"))
    outcome = prune(config=cfg, out=None if args.dry_run else args.out, overwrite=args.overwrite,
                    plots=not args.no_plots and has_matplotlib(), dry_run=args.dry_run, progress=not args.json,
                    eval_text=eval_text, eval_windows=args.eval_windows, device=args.device)
    if not outcome.main:  # another process of a launched run: the main one reports
        return 0
    r = outcome.report
    if args.json:
        emit_json(r)
        return 0
    from llmsculpt.io.report import print_architecture

    verb = "would prune" if args.dry_run else "pruned"
    print_architecture(outcome.architecture, title=f"{verb} with {r['method']}")
    line = (f"params {r['params_before']:,} -> {r['params_after']:,}  "
            f"(removed {r['achieved_ratio']:.1%}, target {r['target_ratio']:.1%})  in {r['seconds']:.1f}s")
    if "ppl_after" in r:
        line += (f"\nheld-out perplexity {r['ppl_before']:.2f} -> {r['ppl_after']:.2f} "
                 f"({r['ppl_windows']} windows of {cfg.data.seq_len})")
    print(line)
    print("dry run: nothing written" if args.dry_run else f"saved to {args.out}")
    return 0
