"""`sculpt estimate`: predicted peak memory of a prune from config.json alone (no weights read).

    sculpt estimate --model llama-8b-config/ --method adaptive --dtype bfloat16 --budget 48GB --json
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llmsculpt.models.placement import DTYPE_CHOICES

    p.add_argument("--model", default=None, help="directory with config.json (weights not needed), .gguf or built-in name")
    p.add_argument("--method", default="adaptive", help="pruning method (default: adaptive)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="working dtype (default auto: the checkpoint's own, from config.json; bfloat16 for GGUF)")
    p.add_argument("--n-samples", type=int, default=10, help="calibration samples (default 10)")
    p.add_argument("--seq-len", type=int, default=128, help="calibration sample length (default 128)")
    p.add_argument("--devices", type=int, default=1, help="devices the weights are sharded over (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (RSS, runtime included) or cuda (allocated memory only)")
    p.add_argument("--layer-by-layer", action="store_true",
                   help="one decoder layer resident at a time (forward-only methods: flap, wanda-sp, magnitude, shortgpt)")
    p.add_argument("--eval-windows", type=int, default=0,
                   help="perplexity windows scored before and after (layer by layer: lm_head is then resident)")
    p.add_argument("--budget", default=None, help="memory per device, e.g. 48GB: say whether the run fits")
    p.add_argument("--json", action="store_true", help="print params, weights_bytes, peak_bytes, fits, breakdown")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.cli._common import emit_json
    from llmsculpt.config import parse_bytes
    from llmsculpt.eval.memory_estimate import estimate, working_dtype

    budget = parse_bytes(args.budget) if args.budget else None
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    e = estimate(args.model if args.model is not None else "smollm2-135m", method=args.method, dtype=args.dtype,
                 n_samples=args.n_samples, seq_len=args.seq_len, devices=args.devices, device=device, budget=budget,
                 layer_by_layer=args.layer_by_layer, eval_windows=args.eval_windows)
    if args.json:
        emit_json(e.to_dict())
        return 0
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    mode = ", layer by layer" if args.layer_by_layer else ""
    dtype = str(working_dtype(args.model if args.model is not None else "smollm2-135m", args.dtype)).removeprefix("torch.")
    print(f"{args.method} prune{mode}, {dtype}, {args.n_samples} × {args.seq_len} samples, micro-batch {e.micro_batch}: "
          f"{e.params:,} params")
    for part, size in e.breakdown.items():
        print(f"  {part:13} {gb(size):>10}")
    print(f"  {'peak':13} {gb(e.peak_bytes):>10} per device")
    if e.fits is not None:
        print(f"{'fits' if e.fits else 'does not fit'} in {gb(e.budget_bytes)}")
    return 0
