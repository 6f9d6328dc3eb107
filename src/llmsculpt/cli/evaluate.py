"""`sculpt eval`: perplexity on a text file (non-overlapping windows), params, a sample generation,
and multiple-choice / lm-eval tasks."""

from __future__ import annotations

import argparse

from llmsculpt.cli._common import add_model_argument, add_placement_arguments, emit_json, load_kwargs, read_text_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_placement_arguments(p)
    p.add_argument("--text", default=None, help="text file for perplexity")
    p.add_argument("--seq-len", type=int, default=128, help="window length for perplexity (default 128)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=None, help="bound the number of windows scored")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="also greedy-generate from this prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print results as JSON (has a numeric 'ppl' key)")
    try:
        from llmsculpt.cli._eval_tasks import add_eval_task_arguments
    except ImportError:  # pragma: no cover - task evaluation not installed in this build
        return
    add_eval_task_arguments(p)


def run(args: argparse.Namespace) -> int:
    from llmsculpt.errors import SculptError
    from llmsculpt.eval.perplexity import perplexity
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import count_params

    wants_tasks = bool(getattr(args, "tasks", None) or getattr(args, "mc_file", None))
    if not args.text and not wants_tasks and not args.generate:
        raise SculptError("nothing to evaluate: give --text FILE (and/or --tasks / --mc-file / --generate)")
    text = read_text_file(args.text) if args.text else None
    loaded = load(args.model, **load_kwargs(args))
    model, tok = loaded.model, loaded.tokenizer
    result: dict = {"model": loaded.source, "params": count_params(model)}
    if text is not None:
        res = perplexity(model, tok, text, seq_len=args.seq_len, batch_size=args.batch_size, max_windows=args.max_windows)
        result.update({"ppl": res.ppl, "nll": res.nll, "tokens": res.tokens, "windows": res.windows, "seq_len": args.seq_len})
    if wants_tasks:
        from llmsculpt.cli._eval_tasks import run_eval_tasks

        result["tasks"] = run_eval_tasks(args, model, tok)
    if args.generate:
        import torch

        ids = tok(args.generate, return_tensors="pt").input_ids.to(next(model.parameters()).device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        result["generation"] = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if args.json:
        emit_json(result)
    else:
        for key, value in result.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0
