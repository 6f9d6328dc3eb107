"""Training engines on 2 processes: data-parallel (DDP) vs fully sharded (FSDP2) vs one process.

The same run three ways on the default model with 32 blocks x 128 tokens of
../shared/data/text/enwiki_sample.txt, batch 4: Adapt-Accel (2 phases to 110M parameters) or
pruning-aware training (to 110M, 2:1 pruning:training steps, 4 % per pruning step). Reports
per-process peak resident memory while training (sampled every 50 ms after the model is loaded),
wall time, final loss and how far the result is from the one-process run.

    python bench/engines.py [--method accel|pretrain] [--blocks 32] [--target 110M]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(out: Path, engine: str, method: str, blocks: int, target: str) -> None:
    """One process of a run (under torchrun, or alone for engine 'one')."""
    import torch

    from llmsculpt.config import parse_count
    from llmsculpt.config import AccelConfig, PretrainPruneConfig
    from llmsculpt.run import run_accel
    from llmsculpt.run import pretrain_prune
    from llmsculpt.models.loading import load
    from llmsculpt.train.data import load_examples
    from llmsculpt.run.fsdp import is_meta

    rank = int(os.environ.get("RANK", "0"))
    loaded = load("smollm2-135m", device="cpu")
    train = out / f"train-{engine}-{rank}.txt"
    train.write_text(DATA.read_text(encoding="utf-8")[:200_000])
    examples, _ = load_examples(train, loaded.tokenizer, fmt="text", seq_len=128)
    examples = examples[:blocks]
    peak = [_rss_mb()]
    loaded_mb = peak[0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    shard, ckpt = engine == "fsdp", out / f"ckpt-{engine}"
    if method == "accel":
        cfg = AccelConfig(target_params=parse_count(target), phases=2, batch_size=4, lr=1e-4, min_lr=1e-5,
                          checkpoint_every=0, prune_steps=1)
        model, plan, log = run_accel(loaded.model, loaded.tokenizer, examples, cfg, checkpoint_dir=ckpt,
                                     progress=False, shard=shard)
    else:
        cfg = PretrainPruneConfig(target_params=parse_count(target), cycle="2:1", quantum=0.04, batch_size=4)
        model, plan, log = pretrain_prune(loaded.model, loaded.tokenizer, examples, cfg, checkpoint_dir=ckpt,
                                          checkpoint_every=0, progress=False, shard=shard)
    final_loss = [e["loss"] for e in log if e.get("type", "train") == "train"][-1]
    seconds = time.perf_counter() - t0
    done.set()
    result = {"engine": engine, "rank": rank, "loaded_mb": loaded_mb, "peak_mb": peak[0], "seconds": seconds,
              "final_loss": final_loss, "params": log[-1]["params"], "plan": plan.to_dict()}
    if not is_meta(model):
        result["weights"] = str(out / f"weights-{engine}-{rank}.pt")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, result["weights"])
    (out / f"result-{engine}-{rank}.json").write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="accel", choices=["accel", "pretrain"])
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--target", default="110M")
    ap.add_argument("--worker", nargs=2, metavar=("OUT", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], args.method, args.blocks, args.target)
        return
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1")
    me = [str(Path(__file__).resolve())]
    opts = ["--method", args.method, "--blocks", str(args.blocks), "--target", args.target]
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("one", "ddp", "fsdp"):
            launch = ([sys.executable] if engine == "one" else
                      [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
            subprocess.run([*launch, *me, *opts, "--worker", tmp, engine], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("result-*.json"))]
        ref = torch.load(next(r["weights"] for r in rows if r["engine"] == "one"))
        print(f"{args.method}: default model -> {args.target}, {args.blocks} blocks x 128 tokens, batch 4")
        print("| engine | process | RSS after load MB | peak RSS while training MB | seconds | final training loss | "
              "max weight diff vs one process |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (["one", "ddp", "fsdp"].index(r["engine"]), r["rank"])):
            diff = "-"
            if "weights" in r:
                w = torch.load(r["weights"])
                diff = f"{max((w[k] - ref[k]).abs().max().item() for k in ref):.1e}"
            else:
                diff = "holds no weights (meta)"
            print(f"| {r['engine']} | {r['rank']} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | {r['seconds']:.0f} | "
                  f"{r['final_loss']:.4f} | {diff} |")


if __name__ == "__main__":
    main()
