"""The ``prune`` verb: a recipe in, a plan (and, unless a dry run, the pruned model) out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from llmsculpt.api._budget import fit_or_refuse
from llmsculpt.api._common import RECIPE_FILE, check_out_dir, is_main, model_and_tokenizer, recipe
from llmsculpt.config import DataConfig, PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import Architecture, architecture, count_params


@dataclass
class PruneOutcome:
    """The pruned model (the caller's own model, untouched, after a dry run), its plan relative to the
    source, the report and the effective recipe."""

    model: nn.Module
    tokenizer: object
    plan: Plan
    report: dict
    recipe: PruneConfig | None = None
    main: bool = True  # this process reports (False on the other processes of a launched run)

    @property
    def architecture(self) -> Architecture:
        """The pruned architecture (for a dry run: what the plan would make of the model)."""
        if self.report.get("dry_run"):
            return self.plan.resulting(architecture(self.model))
        return architecture(self.model)

    def save(self, out: str | os.PathLike, *, overwrite: bool = False, plots: bool = False, write=None) -> Path:
        """Write the model, plan, report and ``recipe.yaml`` atomically; ``plots`` adds PNGs (matplotlib).
        ``write(tmp_dir)`` writes the model instead of the usual save (the layer-by-layer save)."""
        from llmsculpt.io.save import save_pruned

        if self.report.get("dry_run"):
            raise SculptError("a dry run has no pruned model to save; prune without dry_run")
        if write is None and any(p.is_meta for p in self.model.parameters()):
            raise SculptError("this model was pruned layer by layer and written as it went (prune(..., out=DIR)); "
                              "load that directory to save it elsewhere")

        def draw(directory):
            from llmsculpt.io.plots import plot_report

            plot_report(directory, architecture(self.model), self.report)

        extra = {RECIPE_FILE: self.recipe.dumps_yaml()} if self.recipe is not None else None
        return save_pruned(self.model, self.tokenizer, out, plan=self.plan, report=self.report, overwrite=overwrite,
                           extra_files=extra, after=draw if plots else None, write=write)


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
    inplace: bool = False,
    dry_run: bool = False,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    plots: bool = False,
    progress: bool = False,
    eval_text: str | None = None,
    eval_windows: int | None = None,
    device: str | torch.device | None = None,
    **fields,
) -> PruneOutcome:
    """Prune ``model`` (a name/path to load, or a loaded module + ``tokenizer``) to a target size.

    ``fields`` are PruneConfig fields laid over ``config`` (ratio, target_params, method, metric,
    seed, dtype, budget, options, and the calibration data's calib, n_samples, seq_len). With a
    ``budget`` ("24GB"; on CUDA the free memory), a run predicted not to fit is refused before loading.
    A model object passed here is not modified unless ``inplace``; ``dry_run`` plans and reports
    (params after from the plan) without surgery on the model and without writing. ``eval_text``, if
    given, is scored before and after (at most ``eval_windows`` windows of ``seq_len`` tokens). ``out``: save there (model,
    plan, report, recipe.yaml), on the main process only.

    Example:
        >>> out = prune("tiny-qwen2", ratio=0.3, method="uniform", calib_text="abc " * 500)
        >>> round(out.report["achieved_ratio"], 1)
        0.3
    """
    cfg = recipe(PruneConfig, config, model, fields)
    cfg.check_options()  # unknown method or option: before anything is loaded
    if out is not None and not dry_run:
        check_out_dir(out, overwrite)
    if _launched():
        from llmsculpt.api._sharded import prune_sharded

        if isinstance(model, nn.Module) or dry_run:
            raise SculptError("a prune on several processes loads its checkpoint directory itself and cannot dry-run; "
                              "pass the directory's path (--model DIR), or run in one process")
        return prune_sharded(cfg, calib_text=calib_text, out=out, overwrite=overwrite, plots=plots, progress=progress,
                             eval_text=eval_text, eval_windows=eval_windows, calibration_fn=_calibration_fn)
    if _layer_by_layer(cfg, model, device):
        return _prune_layer_by_layer(model, cfg, tokenizer=tokenizer, calib_text=calib_text, dry_run=dry_run,
                                     out=out, overwrite=overwrite, plots=plots, eval_text=eval_text,
                                     eval_windows=eval_windows, device=device)
    micro_batch = fit_or_refuse(model if isinstance(model, nn.Module) else cfg.model, method=cfg.method,
                                dtype=cfg.dtype, n_samples=cfg.data.n_samples, seq_len=cfg.data.seq_len,
                                budget=cfg.budget, device=device, command="this prune")
    model, tokenizer, loaded_here = model_and_tokenizer(model, tokenizer, cfg, device=device, rewrites=True)
    calib = _calibration_fn(tokenizer, cfg.data, calib_text)
    before, source = count_params(model), architecture(model)
    check_prunable(cfg, model.config, source, before)
    calib(cfg.seed)  # fail on bad calibration data before any work
    score = eval_text is not None and not dry_run
    ppl_before = _ppl(model, tokenizer, eval_text, cfg.data.seq_len, eval_windows) if score else None
    t0 = time.perf_counter()
    pruned, result = _plan_and_apply(model, tokenizer, cfg, calib, progress=progress, dry_run=dry_run, calib_text=calib_text,
                                     inplace=inplace or loaded_here, micro_batch=micro_batch)
    seconds = time.perf_counter() - t0
    after = result.plan.resulting(source).param_count() if dry_run else count_params(pruned)
    report = _report(cfg, source, result, params_before=before, params_after=after, seconds=seconds,
                     uniform=(result.plan.resulting(source) if dry_run else architecture(pruned)).is_uniform)
    if dry_run:
        report["dry_run"] = True
    if score:
        report["ppl_before"] = ppl_before
        report["ppl_after"] = _ppl(pruned, tokenizer, eval_text, cfg.data.seq_len, eval_windows)
        report["ppl_windows"] = eval_windows
    result.plan.meta.update({"method": cfg.method, "seed": cfg.seed})
    outcome = PruneOutcome(model=model if dry_run else pruned, tokenizer=tokenizer, plan=result.plan, report=report,
                           recipe=cfg)
    if out is not None and not dry_run and is_main():
        outcome.save(out, overwrite=overwrite, plots=plots)
    return outcome


def _report(cfg: PruneConfig, source: Architecture, result, *, params_before: int, params_after: int,
            seconds: float, uniform: bool) -> dict:
    """The report of a prune, whole-model or layer by layer (perplexities and flags are added after)."""
    return {
        "method": cfg.method, "config": cfg.to_dict(), "params_before": params_before, "params_after": params_after,
        "achieved_ratio": 1 - params_after / params_before, "target_ratio": cfg.removal_target(params_before) / params_before,
        "seconds": seconds, "uniform_layers": uniform, "original_architecture": source.to_dict(),
        "history": result.history,
    }


def check_prunable(cfg: PruneConfig, config, source: Architecture, before: int) -> None:
    """Refuse a calibration length beyond the model's context, and a target below what structured
    pruning keeps (``before``: the parameters now)."""
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and cfg.data.seq_len > context:
        raise SculptError(f"seq-len {cfg.data.seq_len} is beyond the model's context of {context} tokens")
    floor = source.min_param_count()
    if before - cfg.removal_target(before) <= floor:
        raise SculptError(
            f"cannot remove {cfg.removal_target(before):,} of {before:,} parameters: structured pruning keeps at least "
            f"{floor:,} (embeddings plus one head and one MLP channel per layer); lower the ratio or raise the target"
        )


def _launched() -> bool:
    """Launched on several processes (torchrun / accelerate launch): the shard-resident prune."""
    from llmsculpt.run.processes import world_size_from_env

    return world_size_from_env() > 1


def _layer_by_layer(cfg: PruneConfig, model, device) -> bool:
    """Whether this prune runs layer by layer: asked for, or ``auto`` and the whole-model run is
    predicted not to fit (the budget in force, else on the CPU the memory available now)."""
    from llmsculpt.api._layerwise import LAYERWISE_METHODS, check_layerwise

    if cfg.layer_by_layer is True:
        check_layerwise(cfg)
        return True
    if cfg.layer_by_layer != "auto" or cfg.method not in LAYERWISE_METHODS or getattr(cfg, "hidden", False):
        return False
    from llmsculpt.api._budget import budget_in_force
    from llmsculpt.eval.memory_estimate import available_host_memory, estimate
    from llmsculpt.models.placement import source_dtype

    limit, _ = budget_in_force(cfg.budget, device)
    limit = limit or available_host_memory()
    source = model if isinstance(model, nn.Module) else cfg.model
    working = next(model.parameters()).dtype if isinstance(model, nn.Module) else source_dtype(cfg.model, cfg.dtype)
    whole = estimate(source, method=cfg.method, dtype=working, n_samples=cfg.data.n_samples, seq_len=cfg.data.seq_len)
    return limit is not None and whole.peak_bytes > limit


def _prune_layer_by_layer(model, cfg: PruneConfig, *, tokenizer, calib_text, dry_run: bool, out, overwrite: bool,
                          plots: bool, eval_text, eval_windows, device) -> PruneOutcome:
    """The prune with one decoder layer resident (api/_layerwise.py): a safetensors directory is
    streamed layer by layer and written layer by layer; anything else is loaded and its layers are
    moved to the device one at a time."""
    from llmsculpt.api._layerwise import Streamed, engine_for, layerwise_perplexity, output_perplexity, streams_from_files
    from llmsculpt.io.layerwise_save import write_layer_by_layer
    from llmsculpt.methods import PruneContext, get_method

    directory = streams_from_files(model if model is not None else cfg.model)
    _fits_layer_by_layer(directory or (model if model is not None else cfg.model), cfg, device,
                         windows=eval_windows if eval_text is not None and not dry_run else 0)
    if directory is None:  # loaded whole on the host: the same plan, the layers visit the device in turn
        from llmsculpt.models.placement import resolve_device

        loaded, tokenizer, _ = model_and_tokenizer(model, tokenizer, replace(cfg, layer_by_layer=False), device="cpu")
        streamed, residency = None, None
        engine = engine_for(loaded, device=resolve_device(device))
    else:
        if out is None and not dry_run:
            raise SculptError("--layer-by-layer on a checkpoint directory writes the pruned model as it goes: "
                              "give --out DIR (or use --dry-run)")
        streamed = Streamed(directory, dtype=cfg.dtype, device=device, lm_head=eval_text is not None and not dry_run)
        loaded, tokenizer, residency = streamed.model, streamed.tokenizer, streamed.residency
        engine = engine_for(loaded, residency)
    calib = _calibration_fn(tokenizer, cfg.data, calib_text)
    source = architecture(loaded)
    calib(cfg.seed)
    score = eval_text is not None and not dry_run
    ppl_before = (layerwise_perplexity(loaded, engine.residency, tokenizer, eval_text, cfg.data.seq_len, eval_windows)
                  if score else None)
    t0 = time.perf_counter()
    result = get_method(cfg.method).plan(PruneContext(model=loaded, tokenizer=tokenizer, config=cfg, calibration=calib,
                                                      engine=engine))
    result.plan.meta.update({"method": cfg.method, "seed": cfg.seed})
    after = result.plan.resulting(source).param_count()
    report = _report(cfg, source, result, params_before=source.param_count(), params_after=after,
                     seconds=time.perf_counter() - t0, uniform=result.plan.resulting(source).is_uniform)
    report["layer_by_layer"] = True
    if dry_run:
        return PruneOutcome(model=loaded, tokenizer=tokenizer, plan=result.plan, report={**report, "dry_run": True},
                            recipe=cfg)
    if streamed is None:  # in memory: surgery as usual
        from llmsculpt.surgery import apply_plan

        pruned = apply_plan(loaded, result.plan)
        if score:
            report.update(ppl_before=ppl_before, ppl_windows=eval_windows,
                          ppl_after=_ppl(pruned, tokenizer, eval_text, cfg.data.seq_len, eval_windows))
        outcome = PruneOutcome(model=pruned, tokenizer=tokenizer, plan=result.plan, report=report, recipe=cfg)
        if out is not None and is_main():
            outcome.save(out, overwrite=overwrite, plots=plots)
        return outcome
    if score:
        report.update(ppl_before=ppl_before, ppl_windows=eval_windows)
    outcome = PruneOutcome(model=loaded, tokenizer=tokenizer, plan=result.plan, report=report, recipe=cfg)

    def write(tmp: Path) -> dict:
        arch = write_layer_by_layer(loaded, residency, result.plan, tokenizer, tmp)
        if score:  # read back from what was just written, one layer at a time (before the report is)
            report["ppl_after"] = output_perplexity(tmp, device=device, text=eval_text, seq_len=cfg.data.seq_len,
                                                    windows=eval_windows)
        return arch

    if is_main():
        outcome.save(out, overwrite=overwrite, plots=plots, write=write)
    return outcome


def _fits_layer_by_layer(source, cfg: PruneConfig, device, *, windows: int) -> None:
    """Refuse, before loading, a layer-by-layer prune predicted not to fit the budget in force."""
    from llmsculpt.api._budget import budget_in_force
    from llmsculpt.eval.memory_estimate import estimate
    from llmsculpt.models.placement import resolve_device, source_dtype

    limit, origin = budget_in_force(cfg.budget, device)
    if limit is None:
        return
    working = next(source.parameters()).dtype if isinstance(source, nn.Module) else source_dtype(source, cfg.dtype)
    e = estimate(source, method=cfg.method, dtype=working, n_samples=cfg.data.n_samples, seq_len=cfg.data.seq_len,
                 device=resolve_device(device).type, layer_by_layer=True, eval_windows=windows or 0)
    if e.peak_bytes > limit:
        raise SculptError(f"this prune, even layer by layer, would need about {e.peak_bytes / 1e9:.1f} GB at its peak, "
                          f"more than {origin} ({limit / 1e9:.1f} GB): lower --n-samples, --seq-len or --eval-windows, "
                          "or use a device with more memory; `sculpt estimate --layer-by-layer` shows the breakdown")


def _plan_and_apply(model, tokenizer, cfg: PruneConfig, calib, *, progress: bool, dry_run: bool, inplace: bool,
                    micro_batch: int | None = None, calib_text: str | None = None):
    """(pruned model or None for a dry run, PruneResult) through the planners (llmsculpt.methods);
    ``micro_batch``: the samples per measuring pass that fit the budget (None: the engine's choice)."""
    from llmsculpt.measure import LocalEngine
    from llmsculpt.methods import PruneContext, get_method, prune_model

    ctx = PruneContext(model=model, tokenizer=tokenizer, config=cfg, calibration=calib, progress=progress,
                       inplace=inplace and not dry_run, engine=LocalEngine(micro_batch=micro_batch),
                       calib_text=calib_text)
    if dry_run:
        return None, get_method(cfg.method).plan(ctx)
    return prune_model(ctx)


def _ppl(model, tokenizer, text: str, seq_len: int, max_windows: int | None = None) -> float:
    from llmsculpt.eval.perplexity import perplexity

    return perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows).ppl

