"""llama.cpp speed of the dense and a pruned default model, exported with `sculpt export`.

Prunes SmolLM2-135M by --ratio with the given method (default adaptive, 3 steps), exports both to
GGUF (f16) and measures llama-cpp-python prefill and decode tokens/s (batch 1), plus the max abs
difference of next-token logits vs PyTorch on a prompt (f32 export).

    python bench/export_gguf.py [--ratio 0.5] [--method adaptive]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmsculpt import PruneConfig, prune
from llmsculpt.io.export_gguf import export_gguf
from llmsculpt.models.loading import load

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "enwiki_sample.txt"
PROMPT = "The history of the city begins in the early middle ages, when"


def speed(path: Path, tok, new_tokens: int = 48) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, verbose=False, n_threads=2)
    ids = tok(PROMPT * 4).input_ids[:128]
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = len(ids) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([nxt])
    decode = new_tokens / (time.perf_counter() - t0)
    llm.close()
    return prefill, decode


def logit_diff(model, tok, path: Path) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False)
    ids = tok(PROMPT).input_ids
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    llm.close()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(ours - theirs).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--method", default="adaptive")
    args = ap.parse_args()
    base = load("smollm2-135m", device="cpu")
    tok = base.tokenizer
    cfg = PruneConfig(method=args.method, ratio=args.ratio, options={"steps": 3} if args.method == "adaptive" else {})
    cfg.data.n_samples = 8
    pruned = prune(copy.deepcopy(base.model), tokenizer=tok, config=cfg,
                   calib_text=DATA.read_text(encoding="utf-8")[:1_000_000]).model
    print("| model | params | layers | llama.cpp prefill tok/s | decode tok/s | max |logit diff| (f32) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("dense", base.model), (f"{args.method} {args.ratio:.0%}", pruned)):
            f16 = export_gguf(model, tok, Path(tmp) / f"{name.split()[0]}.f16.gguf", dtype="f16")
            f32 = export_gguf(model, tok, Path(tmp) / f"{name.split()[0]}.f32.gguf", dtype="f32")
            pre, dec = speed(f16, tok)
            from llmsculpt.structures.shapes import architecture, count_params

            kind = "uniform" if architecture(model).is_uniform else "heterogeneous (deci)"
            print(f"| {name} | {count_params(model):,} | {kind} | {pre:.0f} | {dec:.1f} | {logit_diff(model, tok, f32):.2e} |", flush=True)


if __name__ == "__main__":
    main()
