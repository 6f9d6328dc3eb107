"""Pruning-aware training vs one-shot prune-then-train, same token budget and parameter count.

Default model to --target parameters; training text: the first --train-chars of
../shared/data/text/enwiki_sample.txt in 128-token blocks; held-out: its last 300 KB.

    python bench/pruning_aware.py [--target 110M] [--train-chars 120000]
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

from llmsculpt import PruneConfig, prune
from llmsculpt.config import parse_count
from llmsculpt.eval.perplexity import perplexity
from llmsculpt.models.loading import load
from llmsculpt.config import PretrainPruneConfig
from llmsculpt.run import pretrain_prune
from llmsculpt.structures.shapes import architecture, count_params
from llmsculpt.train.data import load_examples
from llmsculpt.train.finetune import finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def describe(model) -> str:
    a = architecture(model)
    heads = sum(ls.n_heads for ls in a.layers)
    return f"hidden {a.hidden}, heads {heads}, kv {sum(ls.n_kv for ls in a.layers)}, ffn {sum(ls.mlp for ls in a.layers)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="110M")
    ap.add_argument("--train-chars", type=int, default=120_000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-windows", type=int, default=30)
    args = ap.parse_args()
    text = DATA.read_text(encoding="utf-8")
    held = text[-300_000:]
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    target = parse_count(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_text(text[: args.train_chars])
        examples, _ = load_examples(path, tok, fmt="text", seq_len=128)
    print(f"dense ppl {perplexity(base.model, tok, held, max_windows=args.max_windows).ppl:.2f}; "
          f"{len(examples)} blocks of 128 tokens; target {target:,}")
    print("| run | params | held-out ppl | seconds | architecture (sums over layers) |")
    print("|---|---|---|---|---|")
    t0 = time.perf_counter()
    original = count_params(base.model)
    n_prune = math.ceil((original - target) / (0.03 * original))
    # every block is used once: the training steps left after the pruning phase continue training
    cfg = PretrainPruneConfig(target_params=target, cycle="1:1", quantum=0.03, lr=args.lr, min_lr=args.lr / 10,
                              continue_steps=max(0, len(examples) // 4 - 2 * n_prune))
    m, _, log = pretrain_prune(copy.deepcopy(base.model), tok, examples, cfg, progress=False)
    trained = sum(1 for e in log if e["type"] == "train")
    print(f"| pruning-aware (1:1, {trained} train steps, {len(log) * 4} blocks) | {count_params(m):,} | "
          f"{perplexity(m, tok, held, max_windows=args.max_windows).ppl:.2f} | {time.perf_counter() - t0:.0f} | {describe(m)} |", flush=True)
    used = examples[: len(log) * 4]  # the same blocks (pruning steps also consumed a batch each)
    for method, options in (("uniform", {}), ("adaptive", {"steps": 3})):
        t0 = time.perf_counter()
        cut = PruneConfig(method=method, target_params=target, options=options)
        cut.data.n_samples = 8
        one = prune(copy.deepcopy(base.model), inplace=True, tokenizer=tok, config=cut, calib_text=text[:1_000_000]).model
        one, _ = finetune(one, tok, used, epochs=1, lr=args.lr, min_lr=args.lr / 10, lora=False, progress=False)
        print(f"| one-shot {method} then train ({len(used)} blocks) | {count_params(one):,} | "
              f"{perplexity(one, tok, held, max_windows=args.max_windows).ppl:.2f} | {time.perf_counter() - t0:.0f} | "
              f"{describe(one)} |", flush=True)

if __name__ == "__main__":
    main()
