"""The training verbs: ``accel`` (Adapt-Accel), ``pretrain_prune`` (EfficientLLM), ``finetune``.

Each loads the model and data its recipe names, runs the run engine (``llmsculpt.run``) or the
fine-tuning loop, and saves the result with ``recipe.yaml`` on the main process only: on several
processes every process calls the verb, the main one decides and writes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from torch import nn

from llmsculpt.api._budget import fit_or_refuse
from llmsculpt.api._common import (RECIPE_FILE, TrainOutcome, check_out_dir, has_matplotlib, is_main,
                                   model_and_tokenizer, note_single_process_fsdp, recipe)
from llmsculpt.config import AccelConfig, FinetuneConfig, PretrainPruneConfig, PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.eval.memory_estimate import Training
from llmsculpt.structures.shapes import architecture, count_params


def _need_data(cfg) -> None:
    """Training data named and present: checked before the model is loaded."""
    if not cfg.data:
        raise SculptError(f"{cfg.KIND} needs training data: give data (--data FILE)")
    if not Path(cfg.data).expanduser().exists():
        raise SculptError(f"training data {cfg.data} does not exist")


def _examples(cfg, tokenizer, fmt: str = "text", skip_bad: bool = False):
    from llmsculpt.train.data import load_examples

    return load_examples(cfg.data, tokenizer, fmt=fmt, seq_len=cfg.seq_len, skip_bad=skip_bad)


def _check_run(cfg, out, *, overwrite: bool, resume: bool, fsdp: bool) -> None:
    """What a checkpointed training run (accel, pretrain-prune) checks before anything is loaded."""
    if out is None and resume:
        raise SculptError("resume needs out (its checkpoints are in <out>.ckpt/)")
    _need_data(cfg)
    check_out_dir(out, overwrite)
    note_single_process_fsdp(fsdp)


def _checkpoint_dir(out) -> str | None:
    return f"{str(out).rstrip('/')}.ckpt" if out is not None else None


def accel(model: str | os.PathLike | nn.Module | None = None, *, config: AccelConfig | None = None, tokenizer=None,
          out: str | os.PathLike | None = None, overwrite: bool = False, resume: bool = False, fsdp: bool = False,
          progress: bool = True, device=None, **fields) -> TrainOutcome:
    """Adapt-Accel: ``phases`` rounds of pruning then recovery training down to ``target_params``
    (or by ``ratio``). Checkpoints go to ``<out>.ckpt/`` (``resume`` continues from there); with
    several processes it trains data-parallel (``fsdp``: sharded).

    Example:
        >>> r = accel("tiny-llama", data="train.txt", target_params=100_000, phases=2, out="out/a")  # doctest: +SKIP
        >>> r.report["params_after"] <= 100_000  # doctest: +SKIP
        True
    """
    from llmsculpt.run import run_accel

    cfg = recipe(AccelConfig, config, model, fields)
    PruneConfig(method=cfg.prune_method).check_options()  # an unknown prune_method: before anything is loaded
    _check_run(cfg, out, overwrite=overwrite, resume=resume, fsdp=fsdp)
    fit_or_refuse(model if isinstance(model, nn.Module) else cfg.model, method=cfg.prune_method, dtype=cfg.dtype,
                  n_samples=cfg.calib_samples, seq_len=cfg.calib_len, budget=cfg.budget, device=device,
                  command="this accel run", training=Training(cfg.batch_size, cfg.seq_len, full=cfg.mode == "full",
                                                             teacher=cfg.distill,
                                                             first_phase_kept=1 - (cfg.ratio or 0) / cfg.phases))
    model, tokenizer, _ = model_and_tokenizer(model, tokenizer, cfg, device=device, shard=fsdp, rewrites=True)
    before = count_params(model)
    cfg = cfg.resolved(before)
    examples, bad = _examples(cfg, tokenizer, cfg.format, cfg.skip_bad)
    if bad and progress:
        print(f"skipped {bad} bad records")
    ckpt = _checkpoint_dir(out)
    with contextlib.nullcontext(ckpt) if ckpt else tempfile.TemporaryDirectory(prefix="sculpt-accel-") as where:
        model, plan, log = run_accel(model, tokenizer, examples, cfg, checkpoint_dir=where, resume=resume,
                                     progress=progress, shard=fsdp)
    report = {"method": "adapt-accel", "params_before": before, "params_after": count_params(model),
              "config": cfg.to_dict(), "skipped": bad, "log": log}
    outcome = TrainOutcome(model, tokenizer, plan, report, log, cfg)
    if out is not None and is_main():
        def draw(directory):
            if has_matplotlib():
                from llmsculpt.io.plots import plot_training

                plot_training(directory, log)

        outcome.out = _save(outcome, out, overwrite, after=draw)
    return outcome


def pretrain_prune(model: str | os.PathLike | nn.Module | None = None, *, config: PretrainPruneConfig | None = None,
                   tokenizer=None, out: str | os.PathLike | None = None, overwrite: bool = False, resume: bool = False,
                   fsdp: bool = False, progress: bool = True, device=None, **fields) -> TrainOutcome:
    """EfficientLLM pruning-aware training: prune ``quantum`` of the parameters per pruning step, ``cycle``
    ("pruning:training" steps) until ``target_params``, choosing attention, MLP or stem mini-groups by
    saliency. Writes ``trajectory.jsonl`` (and a plot) beside the model.

    Example:
        >>> r = pretrain_prune("tiny-llama", data="corpus.txt", target_params=110_000, cycle="2:1")  # doctest: +SKIP
        >>> r.report["params_after"] <= 110_000  # doctest: +SKIP
        True
    """
    from llmsculpt.run import pretrain_prune as run_pretrain_prune

    cfg = recipe(PretrainPruneConfig, config, model, fields)
    _check_run(cfg, out, overwrite=overwrite, resume=resume, fsdp=fsdp)
    fit_or_refuse(model if isinstance(model, nn.Module) else cfg.model, method="uniform", dtype=cfg.dtype,
                  n_samples=cfg.batch_size, seq_len=cfg.seq_len, budget=cfg.budget, device=device,
                  command="this pretrain-prune run", training=Training(cfg.batch_size, cfg.seq_len),
                  label="saliency steps and training")
    model, tokenizer, _ = model_and_tokenizer(model, tokenizer, cfg, device=device, shard=fsdp, rewrites=True)
    examples, _ = _examples(cfg, tokenizer)
    before, source = count_params(model), architecture(model)
    model, plan, log = run_pretrain_prune(model, tokenizer, examples, cfg, checkpoint_dir=_checkpoint_dir(out),
                                          checkpoint_every=cfg.checkpoint_every, resume=resume, progress=progress,
                                          shard=fsdp)
    report = {"method": "pruning-aware", "params_before": before, "params_after": count_params(model),
              "original_architecture": source.to_dict(), "config": cfg.to_dict()}
    outcome = TrainOutcome(model, tokenizer, plan, report, log, cfg, source=source)
    if out is not None and is_main():
        def extras(directory):
            from llmsculpt.io.files import dumps_json

            (directory / "trajectory.jsonl").write_text("".join(dumps_json(e, indent=None) + "\n" for e in log))
            if has_matplotlib():
                from llmsculpt.io.plots import plot_trajectory

                plot_trajectory(directory, log, before)

        outcome.out = _save(outcome, out, overwrite, after=extras)
    return outcome


def finetune(model: str | os.PathLike | nn.Module | None = None, *, config: FinetuneConfig | None = None,
             tokenizer=None, out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
             device=None, **fields) -> TrainOutcome:
    """Recovery fine-tuning, LoRA (merged before returning) or full. A saved llmsculpt directory's
    plan and report are carried over to ``out``.

    Example:
        >>> r = finetune("out/m", data="alpaca.jsonl", epochs=1, out="out/m-lora")  # doctest: +SKIP
        >>> r.report["finetune"]["mode"]  # doctest: +SKIP
        'lora'
    """
    from llmsculpt.io.files import read_json
    from llmsculpt.plan import Plan
    from llmsculpt.train.finetune import finetune as run_finetune

    cfg = recipe(FinetuneConfig, config, model, fields)
    _need_data(cfg)
    check_out_dir(out, overwrite)
    model, tokenizer, _ = model_and_tokenizer(model, tokenizer, cfg, device=device)
    examples, bad = _examples(cfg, tokenizer, cfg.format, cfg.skip_bad)
    src = Path(str(cfg.model)) if cfg.model else None  # what the output carries over, read before any training
    plan = Plan.load(src / "plan.json") if src and (src / "plan.json").is_file() else None
    report_path = src / "sculpt_report.json" if src else None
    prior = read_json(report_path, what="report") if report_path and report_path.is_file() else {}
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    model, log = run_finetune(model, tokenizer, examples, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                              min_lr=min_lr, lora=cfg.mode == "lora", lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                              seed=cfg.seed, progress=progress, grad_accum=cfg.grad_accum,
                              gradient_checkpointing=cfg.gradient_checkpointing)
    report = {**prior, "finetune": {"mode": cfg.mode, "epochs": cfg.epochs, "lr": cfg.lr, "skipped": bad, "log": log,
                                    "recipe": cfg.to_dict()}}
    outcome = TrainOutcome(model, tokenizer, plan, report, log, cfg)
    if out is not None and is_main():
        outcome.out = _save(outcome, out, overwrite)
    return outcome


def _save(outcome: TrainOutcome, out, overwrite: bool, after=None) -> Path:
    from llmsculpt.io.save import save_pruned

    return save_pruned(outcome.model, outcome.tokenizer, out, plan=outcome.plan, report=outcome.report,
                       overwrite=overwrite, extra_files={RECIPE_FILE: outcome.recipe.dumps_yaml()}, after=after)
