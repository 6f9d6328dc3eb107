"""Peak memory of a prune per method × dtype × model, in bytes per parameter, and its time.

Each run is its own process (``llmsculpt.prune(path, ...)``: the real prune of a model it loads
itself, in place, surgery included, nothing saved; ``sculpt prune --dry-run`` would deep-copy the
model for the iterative planners, a copy a real prune does not make) measured from outside: peak RSS with
``/usr/bin/time -v`` on the CPU (on CUDA the child reports ``torch.cuda.max_memory_allocated``, and that
is the row's peak). Each row also prints ``sculpt estimate``'s prediction for the same run. ``accel``
runs one Adapt-Accel phase (prune 25 %, then full training at batch 4 × 128 on the first
40,000 characters of ../shared/data/text/lee_news.txt, saved): the training phase's peak against the estimate's.
A method written ``flap:lbl`` (any forward-only method) runs ``layer_by_layer=True``: streamed from the
safetensors files one layer at a time and written as it goes (so that row includes the save; the
whole-model rows do not save). A method written ``adaptive:p2`` is launched on 2 CPU processes (torchrun,
gloo; the shard-resident prune, api/_sharded.py; ``:p1`` is the ordinary one-process run launched the
same way): its peak is the highest of the processes' own peak RSS, against ``sculpt estimate --devices 2``. Models: the default (SmolLM2-135M) and a 0.5B-class Qwen2 shape (hidden 896, 24 layers, 14 heads /
2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings, q/k/v bias) with random weights, written
once as BF16 safetensors to ``--cache``. ``--src DIR`` runs another checkout (e.g. a ``git worktree``
of the previous commit at /tmp/before) for before/after numbers; such a checkout may lack
``--dtype`` (then only float32 is run there) unless ``--src-dtype`` says it has it.

    nice -n 5 python bench/memory.py [--models default,qwen05b] [--methods adaptive,flap,uniform]
        [--dtypes float32,bfloat16] [--steps 2] [--src /tmp/before/src] [--json out.json]
    nice -n 5 python bench/memory.py --models qwen05b --methods flap,flap:lbl,wanda-sp,wanda-sp:lbl --dtypes bfloat16
    nice -n 5 python bench/memory.py --models qwen05b --methods adaptive:p1,adaptive:p2,adaptive:p4 --dtypes bfloat16

Measured (this machine: 2 CPU cores, 24 GiB, no GPU, otherwise quiet; 2026-12-02; 0.5B Qwen2 shape,
bf16, adaptive, 2 steps, 10 × 128 calibration, nothing saved; peak = the highest process's own peak
RSS, which includes its own runtime of ~0.4 GiB):

| processes | peak RSS per process | estimate (``--devices N``) | prune s |
|---|---|---|---|
| 1 (the ordinary run) | 1.93 GiB | 1.86 GiB (−4 %) | 66 |
| 2 (shard-resident) | 1.46 GiB (2026-12-01: 2.35) | 1.56 GiB (+7 %) | 111 |
| 4 (shard-resident) | 1.25 GiB (2026-12-01: 1.89) | 1.36 GiB (+9 %) | 161 |

What took 2 processes from 2.35 to 1.46 GiB: the root unit (a tied 151,936 × 896 embedding, 28 % of
this shape's parameters) is replicated instead of sharded, since FSDP2 held it gathered through the
whole pass anyway (−0.02 GiB alone); a launched process serves allocations from 1 MiB with mmap, since
its shards are below the 8 MiB threshold and fragmented the heap (−0.7 GiB, process_memory.py); and
each layer's gradient shards are reduced to scores as soon as FSDP2 has reduce-scattered them, not
all at the end of the pass (−0.1 GiB here; 18.8 → 5.4 GB per GPU for Llama-3.1-70B over 8).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

QWEN05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
               intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)


def qwen05b_dir(cache: Path) -> Path:
    """The 0.5B-class Qwen2 shape with random weights (BF16 safetensors) and the default tokenizer."""
    out = cache / "qwen2-0.5b-shape"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llmsculpt.models.loading import load

    torch.manual_seed(0)
    config = Qwen2Config(**QWEN05B, dtype="bfloat16")
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    load("smollm2-135m").tokenizer.save_pretrained(tmp)  # ids < 49,152 < 151,936: valid for this shape
    os.replace(tmp, out)
    return out


CHILD = """import json, sys, tempfile, llmsculpt
try:  # what `sculpt prune` does: an 8 MiB mmap threshold, a bounded oneDNN kernel cache (older trees: neither)
    from llmsculpt.process_memory import tune_process_memory
    tune_process_memory()
except ImportError:
    pass
model, method, dtype, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
layered = method.endswith(":lbl")  # layer by layer: streamed from the files and written as it goes
method = method.removesuffix(":lbl")
kw = {"options": {"steps": steps}} if method == "adaptive" else {}
kw |= {"dtype": dtype} if dtype != "-" else {}
kw |= {"layer_by_layer": True, "out": tempfile.mkdtemp() + "/out"} if layered else {}
if method == "accel":  # one phase of pruning then full training (batch 4 x 128) on sys.argv[5], saved
    r = llmsculpt.accel(model, ratio=0.25, phases=1, prune_steps=steps, data=sys.argv[5], batch_size=4, seq_len=128,
                        out=tempfile.mkdtemp() + "/out", progress=False, **{k: v for k, v in kw.items() if k == "dtype"}).report
    r = {"params_before": r["params_before"], "seconds": r.get("seconds", 0.0)}
else:
    r = llmsculpt.prune(model, method=method, ratio=0.25, **kw).report
import torch
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None  # the device's own peak
print(json.dumps({"params_before": r["params_before"], "seconds": r["seconds"], "cuda_peak": cuda}))
"""

LAUNCHED = """import json, os, resource, sys, llmsculpt
from llmsculpt.process_memory import tune_process_memory
tune_process_memory()
model, method, dtype, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
kw = {"options": {"steps": steps}} if method == "adaptive" else {}
r = llmsculpt.prune(model, method=method, ratio=0.25, dtype=dtype, **kw).report
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB: this process's own peak
rank = int(os.environ.get("RANK", 0))
with open(os.path.join(sys.argv[5], f"rank{rank}.json"), "w") as f:  # one file each: printed lines interleave
    json.dump({"rank": rank, "peak_kb": peak, "params_before": r["params_before"], "seconds": r["seconds"]}, f)
"""

ACCEL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "lee_news.txt"


def accel_data(cache: Path) -> Path:
    """The accel row's training text: the first 40,000 characters of lee_news.txt (~20 steps of 4 × 128)."""
    out = cache / "accel-train.txt"
    if not out.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        out.write_text(ACCEL_TEXT.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return out


def run_launched(model: str, method: str, dtype: str, *, steps: int, processes: int) -> dict:
    """``method`` launched on ``processes`` CPU processes (torchrun, gloo; one process: the ordinary
    run): the highest of the processes' own peak RSS, and the main process's."""
    import tempfile

    work = Path(tempfile.mkdtemp())
    script = work / "launched.py"
    script.write_text(LAUNCHED)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), str(script), model, method, dtype, str(steps), str(work)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        own = [ln for ln in proc.stderr.splitlines() if "Error" in ln]
        return {"error": own[-1] if own else f"rc {proc.returncode}"}
    ranks = [json.loads(f.read_text()) for f in sorted(work.glob("rank*.json"))]
    peak = max(r["peak_kb"] for r in ranks) * 1024
    params = ranks[0]["params_before"]
    return {"peak_rss_bytes": peak, "params": params, "bytes_per_param": peak / params,
            "main_rss_bytes": next(r["peak_kb"] for r in ranks if r["rank"] == 0) * 1024,
            "prune_seconds": max(r["seconds"] for r in ranks), "processes": processes,
            "estimate_bytes": predicted(model, method, dtype, steps, devices=processes)}


def run_one(model: str, method: str, dtype: str, *, steps: int, src: str | None, src_dtype: bool = False,
            data: Path | None = None) -> dict:
    if ":p" in method:  # e.g. adaptive:p2, launched on 2 processes
        base, n = method.split(":p")
        return run_launched(model, base, dtype, steps=steps, processes=int(n))
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    # the API's prune of a model it loads itself: in place, surgery included, nothing saved (the CLI
    # would need --out, and a dry run deep-copies the model for the iterative planners)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, model, method,
           dtype if not src or src_dtype else "-", str(steps), str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        own = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("\t")]  # not time -v's
        return {"error": own[-2] if len(own) > 1 else f"rc {proc.returncode}"}
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", proc.stderr).group(1)
    params = report["params_before"]
    if report.get("cuda_peak"):  # on a GPU the peak that matters is the device's: report it as the peak
        rss_kb = report["cuda_peak"] // 1024
    return {"peak_rss_bytes": rss_kb * 1024, "params": params, "bytes_per_param": rss_kb * 1024 / params,
            "prune_seconds": report["seconds"], "wall": wall, "estimate_bytes": predicted(model, method, dtype, steps)}


def predicted(model: str, method: str, dtype: str, steps: int, devices: int = 1) -> int | None:
    """``sculpt estimate``'s peak for the same run (the training phase included for accel)."""
    from llmsculpt.eval.memory_estimate import Training, estimate

    if dtype == "-":
        return None
    base, layered = method.removesuffix(":lbl"), method.endswith(":lbl")
    if base == "accel":
        return estimate(model, method="adaptive", dtype=dtype, n_samples=8, seq_len=128, device="cuda" if _has_cuda() else "cpu",
                        training=Training(batch_size=4, seq_len=128, first_phase_kept=0.75)).peak_bytes
    device = "cuda" if _has_cuda() else "cpu"
    return estimate(model, method=base, dtype=dtype, layer_by_layer=layered, device=device, devices=devices).peak_bytes


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def baseline_rss(src: str | None) -> int:
    """RSS of a process that only imports torch + transformers + llmsculpt (subtract for 'model' bytes)."""
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    code = "import torch, transformers, llmsculpt.cli.prune, llmsculpt.models.loading"
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024


def time_passes(model_name: str, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds of one Adapt-Pruner measuring pass (layer importance + Taylor
    gradients reduced to group scores as they are produced, 10 × 128 tokens) in float32 and
    bfloat16, interleaved (fair on a busy machine)."""
    import copy
    import time

    import torch

    from llmsculpt.calibration import calibration_batch, default_documents
    from llmsculpt.importance import get_metric
    from llmsculpt.measure import LocalEngine, Needs
    from llmsculpt.methods.oneshot import reducer_for
    from llmsculpt.models.loading import load

    loaded = load(model_name, device="cpu")
    batch = calibration_batch(loaded.tokenizer, n_samples=10, seq_len=128, seed=0, texts=default_documents("calibration"))
    models = {"float32": loaded.model, "bfloat16": copy.deepcopy(loaded.model).to(torch.bfloat16)}
    best = dict.fromkeys(models, float("inf"))
    for _ in range(repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            LocalEngine().measure(model, batch, Needs(grad=True, layer_change="cosine"),
                                  reducer=reducer_for(model, get_metric("taylor")))
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,qwen05b")
    ap.add_argument("--methods", default="adaptive,flap,uniform")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=2, help="adaptive steps (peak memory is per step; default 2)")
    ap.add_argument("--src", default=None, help="PYTHONPATH of another checkout (float32 only)")
    ap.add_argument("--src-dtype", action="store_true", help="the --src checkout has --dtype: run every dtype")
    ap.add_argument("--cache", default="/tmp/llmsculpt-bench")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--time-passes", action="store_true", help="only time one measuring pass, fp32 vs bf16")
    args = ap.parse_args()
    if args.time_passes:
        for model in args.models.split(","):
            path = "smollm2-135m" if model == "default" else str(qwen05b_dir(Path(args.cache)))
            best = time_passes(path)
            print(f"{model}: measuring pass float32 {best['float32']:.2f}s, bfloat16 {best['bfloat16']:.2f}s "
                  f"(ratio {best['bfloat16'] / best['float32']:.2f})", flush=True)
        return
    paths = {"default": "smollm2-135m", "qwen05b": None}
    base = baseline_rss(args.src)
    print(f"import-only RSS {base / 2**20:.0f} MiB ({'src ' + args.src if args.src else 'this tree'})")
    print(f"{'model':8} {'method':11} {'dtype':9} {'peak RSS':>9} {'B/param':>8} {'(-import)':>9} {'prune s':>8} "
          f"{'estimate':>9}")
    rows = []
    dtypes = ["float32"] if args.src and not args.src_dtype else args.dtypes.split(",")
    for model in args.models.split(","):
        path = paths[model] or str(qwen05b_dir(Path(args.cache)))
        for method in args.methods.split(","):
            for dtype in dtypes:
                r = {"model": model, "method": method, "dtype": dtype,
                     **run_one(path, method, dtype, steps=args.steps, src=args.src, src_dtype=args.src_dtype,
                              data=accel_data(Path(args.cache)) if method == "accel" else None)}
                rows.append(r)
                if "error" in r:
                    print(f"{model:8} {method:11} {dtype:9} error: {r['error']}")
                    continue
                net = (r["peak_rss_bytes"] - base) / r["params"]
                est = f"{r['estimate_bytes'] / 2**30:8.2f}G" if r.get("estimate_bytes") else "       –"
                print(f"{model:8} {method:11} {dtype:9} {r['peak_rss_bytes'] / 2**30:8.2f}G {r['bytes_per_param']:8.2f} "
                      f"{net:9.2f} {r['prune_seconds']:8.1f} {est}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"import_rss": base, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
