"""The verbs that read a model without changing it: ``evaluate``, ``inspect``, ``bench_speed``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmsculpt.api._common import model_and_tokenizer, recipe
from llmsculpt.config import EvalConfig
from llmsculpt.errors import SculptError
from llmsculpt.structures.shapes import Architecture, architecture, count_params


def evaluate(model: str | os.PathLike | nn.Module | None = None, tokenizer=None, *, config: EvalConfig | None = None,
             text: str | None = None, device: str | torch.device | None = None, **fields) -> dict:
    """Perplexity of a model (name, path or module) on ``text`` (the text itself; or ``text_file``), a
    greedy ``generate`` sample, and multiple-choice / lm-eval ``tasks``: a dict with ``ppl``,
    ``tokens``, ``windows``, ``params`` (and ``tasks``, ``generation`` when asked).

    Example:
        >>> r = evaluate("tiny-llama", text="The quick brown fox. " * 100, seq_len=32)
        >>> r["ppl"] > 1
        True
    """
    from llmsculpt.eval.perplexity import perplexity
    from llmsculpt.eval.tasks import check_tasks, score_tasks
    from llmsculpt.io.files import read_text

    cfg = recipe(EvalConfig, config, model, fields)
    if text is None and cfg.text_file:
        text = read_text(cfg.text_file)
    if text is None and not cfg.wants_tasks and not cfg.generate:
        raise SculptError("nothing to evaluate: give --text FILE (and/or --tasks / --mc-file / --generate)")
    check_tasks(cfg)
    model, tokenizer, _ = model_and_tokenizer(model, tokenizer, cfg, device=device)
    result: dict = {"model": cfg.model if cfg.model is not None else type(model).__name__, "params": count_params(model)}
    if text is not None:
        res = perplexity(model, tokenizer, text, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                         max_windows=cfg.max_windows)
        result.update({"ppl": res.ppl, "nll": res.nll, "tokens": res.tokens, "windows": res.windows,
                       "seq_len": cfg.seq_len})
    if cfg.wants_tasks:
        result["tasks"] = score_tasks(cfg, model, tokenizer)
    if cfg.generate:
        ids = tokenizer(cfg.generate, return_tensors="pt").input_ids.to(next(model.parameters()).device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=cfg.max_new_tokens, do_sample=False)
        result["generation"] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return result


@dataclass
class Inspection:
    """A model's per-layer architecture, parameter count and (for a saved llmsculpt directory) its report."""

    source: str
    architecture: Architecture
    params: int
    report: dict

    def to_dict(self) -> dict:
        return {"architecture": self.architecture.to_dict(), "params": self.params, "report": self.report}


def inspect(model: str | os.PathLike, *, dtype: str | torch.dtype | None = None, device=None) -> Inspection:
    """Per-layer heads, K/V heads, MLP widths and parameters of a model, and its ``sculpt_report.json``.

    No weight is read: a directory's shapes come from ``config.json`` (the model is built on the meta
    device) checked against its safetensors headers; a GGUF file's from its metadata. ``dtype`` and
    ``device`` are accepted for symmetry with the other verbs and change nothing.

    Example:
        >>> inspect("tiny-llama").params > 0
        True
    """
    from llmsculpt.io.files import read_json
    from llmsculpt.io.headers import gguf_architecture, safetensors_shapes
    from llmsculpt.models.decilm.loader import is_nas_export
    from llmsculpt.models.loading import resolve_source
    from llmsculpt.models.meta import check_weight_shapes, meta_model

    kind, where = resolve_source(model)
    report_path = Path(where) / "sculpt_report.json"
    report = read_json(report_path, what="report") if kind == "dir" and report_path.is_file() else {}
    if kind == "gguf":
        arch = gguf_architecture(where)
    else:
        built = meta_model(model)
        if kind == "dir" and not is_nas_export(where):  # a vLLM export's weights are padded: shapes differ by design
            check_weight_shapes(built, safetensors_shapes(where), where=where)
        arch = architecture(built)
    return Inspection(source=os.fspath(model), architecture=arch, params=arch.param_count(), report=report)


def bench_speed(model: str | os.PathLike, *, baseline: str | os.PathLike | None = None,
                batch_sizes: tuple[int, ...] = (1, 8), prompt_len: int = 128, new_tokens: int = 32, repeats: int = 3,
                dtype: str | torch.dtype | None = "auto", device=None) -> dict:
    """Prefill/decode tokens/s, peak memory, parameters and FLOPs per token of ``model`` (and of
    ``baseline``, measured after it in the same run): ``{"model": SpeedResult, "baseline": ..., "ratios": ...}``.

    Example:
        >>> r = bench_speed("tiny-llama", batch_sizes=(1,), prompt_len=8, new_tokens=2, repeats=1)
        >>> r["model"].points[0].batch_size
        1
    """
    from llmsculpt.eval.speed import compare_speed, measure_speed
    from llmsculpt.models.loading import load

    if not batch_sizes or min(batch_sizes) < 1:
        raise SculptError(f"batch sizes must be positive integers like 1,8, got {batch_sizes!r}")
    if min(prompt_len, new_tokens, repeats) < 1:
        raise SculptError("--prompt-len, --new-tokens and --repeats must be positive")
    kw = dict(batch_sizes=tuple(batch_sizes), prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats)
    results = {"model": measure_speed(load(model, dtype=dtype, device=device).model, **kw)}
    if baseline:  # loaded after the first model is measured and dropped: one model in memory at a time
        results["baseline"] = measure_speed(load(baseline, dtype=dtype, device=device).model, **kw)
        results["ratios"] = compare_speed(results["model"], results["baseline"])
    return results
