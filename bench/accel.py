"""Adapt-Accel: interleaved (N phases) vs prune-then-train (N = 1), same token budget.

Default model shrunk by ~1/3 (to 90M parameters); training text: the first ~150 KB of
../shared/data/text/enwiki_sample.txt packed into 128-token blocks; held-out: its last 300 KB.

    python bench/accel.py [--runs 1:reset,4:reset,4:carry] [--train-chars 150000] [--target 90M]

A run is PHASES:OPTIMIZER_STATE (reset: new AdamW after each pruning; carry: surviving moments kept).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from llmsculpt.config import parse_count
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.config import AccelConfig
from llmsculpt.run import run_accel
from llmsculpt.models.loading import load
from llmsculpt.structures.shapes import count_params
from llmsculpt.train.data import load_examples

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="1:reset,4:reset,4:carry", help="PHASES:reset|carry, comma-separated")
    ap.add_argument("--train-chars", type=int, default=150_000)
    ap.add_argument("--target", default="90M")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-windows", type=int, default=40)
    args = ap.parse_args()
    text = DATA.read_text(encoding="utf-8")
    held_out = text[-300_000:]
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.txt"
        train.write_text(text[: args.train_chars])
        examples, _ = load_examples(train, tok, fmt="text", seq_len=128)
        print(f"dense ppl {perplexity(base.model, tok, held_out, max_windows=args.max_windows).ppl:.2f}; "
              f"{len(examples)} blocks x 128 tokens = {len(examples) * 128:,} training tokens; target {args.target}")
        print("| schedule | phases | optimizer state | params | held-out ppl | seconds |")
        print("|---|---|---|---|---|---|")
        for run in args.runs.split(","):
            phases, state = int(run.split(":")[0]), run.split(":")[1]
            cfg = AccelConfig(target_params=parse_count(args.target), phases=phases, batch_size=4, lr=args.lr,
                              min_lr=args.lr / 10, checkpoint_every=0, prune_steps=2, optimizer_state=state)
            t0 = time.perf_counter()
            model, _, _ = run_accel(copy.deepcopy(base.model), tok, examples, cfg,
                                    checkpoint_dir=Path(tmp) / f"ckpt{phases}{state}", progress=False)
            ppl = perplexity(model, tok, held_out, max_windows=args.max_windows).ppl
            name = "prune-then-train" if phases == 1 else "interleaved"
            print(f"| {name} | {phases} | {state} | {count_params(model):,} | {ppl:.2f} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)

if __name__ == "__main__":
    main()
