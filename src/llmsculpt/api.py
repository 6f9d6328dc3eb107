"""The public verbs: prune, load, evaluate.

Example:
    >>> import llmsculpt
    >>> out = llmsculpt.prune("tiny-llama", ratio=0.2, calib_text="some text " * 400)
    >>> out.report["params_after"] < out.report["params_before"]
    True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from llmsculpt.config import DataConfig, PruneConfig
from llmsculpt.models.loading import Loaded
from llmsculpt.models.loading import load as _load
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture, count_params


@dataclass
class PruneOutcome:
    model: nn.Module
    tokenizer: object
    plan: Plan
    report: dict

    def save(self, out: str | os.PathLike, *, overwrite: bool = False, plots: bool = False) -> None:
        """Write the model, plan and report atomically; ``plots`` adds PNGs (needs matplotlib)."""
        from llmsculpt.io.save import save_pruned

        def draw(directory):
            from llmsculpt.io.plots import plot_report

            plot_report(directory, architecture(self.model), self.report)

        save_pruned(
            self.model, self.tokenizer, out, plan=self.plan, report=self.report, overwrite=overwrite,
            after=draw if plots else None,
        )


def load(name: str | os.PathLike | None = None, *, device=None, dtype: str | torch.dtype | None = torch.float32) -> Loaded:
    """Load a model + tokenizer: built-in name, directory (pruned or not), .gguf file or hub id.

    ``dtype``: float32 (default), bfloat16, float16 or "auto" (the checkpoint's own; GGUF → bfloat16);
    ``device``: "auto"/None (CUDA when present), "cpu", "cuda:N", "mps"."""
    return _load(name, device=device, dtype=dtype)


def _calibration_fn(tokenizer, data: DataConfig, calib_text: str | None):
    from llmsculpt.calibration import calibration_batch

    kw = {"texts": [calib_text]} if calib_text is not None else {"source": data.calib}

    def make(seed: int) -> torch.Tensor:
        return calibration_batch(
            tokenizer, n_samples=data.n_samples, seq_len=data.seq_len, seed=seed, min_length=data.min_length, **kw
        )

    return make


def prune(
    model: str | os.PathLike | nn.Module | None = None,
    *,
    config: PruneConfig | None = None,
    tokenizer=None,
    calib_text: str | None = None,
    progress: bool = False,
    eval_text: str | None = None,
    eval_windows: int | None = None,
    dtype: str | torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    **overrides,
) -> PruneOutcome:
    """Prune ``model`` (a name/path to load, or a loaded module + ``tokenizer``) to a target size.

    ``overrides`` are PruneConfig fields (ratio, target_params, method, metric, seed...).
    ``eval_text``, if given, is used to report perplexity before and after (on at most
    ``eval_windows`` windows of ``seq_len`` tokens). ``dtype``/``device`` are :func:`load`'s, used
    when ``model`` is loaded here; the weights stay in that dtype through scoring and surgery.

    Example:
        >>> out = prune("tiny-qwen2", ratio=0.3, method="uniform", calib_text="abc " * 500)
        >>> round(out.report["achieved_ratio"], 1)
        0.3
    """
    from llmsculpt.methods import PruneContext, get_method

    cfg = config or PruneConfig()
    if overrides:
        data = cfg.to_dict()
        for k, v in overrides.items():
            if k in DataConfig.__dataclass_fields__:
                data["data"][k] = v
            else:
                data[k] = v
        data.pop("ratio", None) if "target_params" in overrides else None
        data.pop("target_params", None) if "ratio" in overrides else None
        cfg = PruneConfig.from_dict(data)
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("pass the tokenizer along with a model object")
    else:
        loaded = _load(model if model is not None else cfg.model, dtype=dtype, device=device)
        model, tokenizer = loaded.model, loaded.tokenizer
    method = get_method(cfg.method)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and cfg.data.seq_len > context:
        from llmsculpt.errors import SculptError

        raise SculptError(f"seq-len {cfg.data.seq_len} is beyond the model's context of {context} tokens")
    calib = _calibration_fn(tokenizer, cfg.data, calib_text)
    before = count_params(model)
    floor = architecture(model).min_param_count()
    if before - cfg.removal_target(before) <= floor:
        from llmsculpt.errors import SculptError

        raise SculptError(
            f"cannot remove {cfg.removal_target(before):,} of {before:,} parameters: structured pruning keeps at least "
            f"{floor:,} (embeddings plus one head and one MLP channel per layer); lower the ratio or raise the target"
        )
    original = architecture(model).to_dict()
    calib(cfg.seed)  # fail on bad calibration data before any work
    ppl_before = _ppl(model, tokenizer, eval_text, cfg.data.seq_len, eval_windows) if eval_text else None
    t0 = time.perf_counter()
    result = method(PruneContext(model=model, tokenizer=tokenizer, config=cfg, calibration=calib, progress=progress))
    seconds = time.perf_counter() - t0
    after = count_params(model)
    report = {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "params_before": before,
        "params_after": after,
        "achieved_ratio": 1 - after / before,
        "target_ratio": cfg.removal_target(before) / before,
        "seconds": seconds,
        "uniform_layers": architecture(model).is_uniform,
        "original_architecture": original,
        "history": result.history,
    }
    if eval_text:
        report["ppl_before"] = ppl_before
        report["ppl_after"] = _ppl(model, tokenizer, eval_text, cfg.data.seq_len, eval_windows)
        report["ppl_windows"] = eval_windows
    result.plan.meta.update({"method": cfg.method, "seed": cfg.seed})
    return PruneOutcome(model=model, tokenizer=tokenizer, plan=result.plan, report=report)


def _ppl(model, tokenizer, text: str, seq_len: int, max_windows: int | None = None) -> float:
    from llmsculpt.eval.perplexity import perplexity

    return perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows).ppl


def evaluate(model, tokenizer=None, *, text: str, seq_len: int = 128, batch_size: int = 8,
             dtype: str | torch.dtype | None = torch.float32, device: str | torch.device | None = None) -> dict:
    """Perplexity of a model (name, path or module) on ``text``: {"ppl", "tokens", "params"};
    ``dtype``/``device`` as in :func:`load` (used when ``model`` is loaded here)."""
    from llmsculpt.eval.perplexity import perplexity

    if not isinstance(model, nn.Module):
        loaded = _load(model, dtype=dtype, device=device)
        model, tokenizer = loaded.model, loaded.tokenizer
    res = perplexity(model, tokenizer, text, seq_len=seq_len, batch_size=batch_size)
    return {"ppl": res.ppl, "tokens": res.tokens, "windows": res.windows, "params": count_params(model)}
