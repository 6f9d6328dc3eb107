"""``prune`` launched on several processes (torchrun / accelerate launch, the same command line as
one process): the model lives only as FSDP2 shards (run/shards.py), so no process ever holds it whole.

Every process reads its rows of each tensor from the safetensors checkpoint (a GGUF file's converted
copy in the cache) and builds the same meta-device skeleton; the planner runs in lockstep on every
process, its measuring passes through the sharded model (measure/sharded.py), each gradient reduced
to group scores where its shard lives;
the main process decides, every process applies the plan to its own shards. Perplexity runs through
the shards on every process (each computes the same number; on GPUs in parallel). The main process
writes the pruned model one FSDP unit at a time, gathered from the shards.

Gradient methods whose scores the shards can reduce (``adaptive``, ``uniform`` with a Taylor-type
metric) run this way; the forward-only methods prune a model that does not fit one device layer by
layer instead (``--layer-by-layer``, one process).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from llmsculpt.config import PruneConfig
from llmsculpt.errors import SculptError

SHARDED_METHODS = ("adaptive", "uniform")


def check_sharded(cfg: PruneConfig) -> None:
    """Refuse, before anything is loaded, what a shard-resident prune cannot do."""
    from llmsculpt.importance import get_metric
    from llmsculpt.importance.groups import GroupReducer

    if cfg.method not in SHARDED_METHODS:
        raise SculptError(f"{cfg.method} cannot run on several processes (only {', '.join(SHARDED_METHODS)} can: "
                          "their gradients are reduced where the shards live); run it in one process, "
                          "for a model that does not fit with --layer-by-layer")
    metric = get_metric(cfg.metric)
    if not GroupReducer.handles(metric):
        raise SculptError(f"metric {cfg.metric} cannot be scored from the shards on several processes; "
                          "use taylor or taylor_vector, or run in one process")
    if cfg.layer_by_layer is True:
        raise SculptError("--layer-by-layer runs in one process; launch it without torchrun")


def checkpoint_directory(name) -> Path | None:
    """The safetensors checkpoint directory ``name`` names (as the layer-by-layer prune finds it), None
    for a GGUF file (the default model is one: :func:`converted_gguf`), or a one-line refusal."""
    from llmsculpt.api._layerwise import streams_from_files
    from llmsculpt.models.loading import resolve_source

    directory = streams_from_files(name)
    if directory is None and not isinstance(name, torch.nn.Module) and resolve_source(name)[0] == "gguf":
        return None
    if directory is None:
        raise SculptError(f"a prune on several processes reads a safetensors checkpoint directory or a GGUF file, "
                          f"one shard of each tensor per process; {name} is neither (save it with sculpt prune "
                          "--ratio 0 or transformers' save_pretrained first)")
    return directory


def converted_gguf(name, procs) -> Path:
    """The GGUF file ``name``'s converted copy in the cache (models/loading.py), written once by the
    main process while the others wait, so only one process ever holds the converted model whole.
    Collective."""
    from llmsculpt.models.loading import _convert_gguf_cached, resolve_source

    where = Path(resolve_source(name)[1])
    if not procs.is_main:
        procs.barrier()  # the main process converts first
    directory = _convert_gguf_cached(where)
    if procs.is_main:
        procs.barrier()
    return directory


def prune_sharded(cfg: PruneConfig, *, calib_text, out, overwrite: bool, plots: bool, progress: bool,
                  eval_text: str | None, eval_windows: int | None, calibration_fn):
    """The shard-resident prune (see the module docstring); returns a PruneOutcome whose ``model`` is
    the pruned skeleton (meta device) and whose ``main`` says whether this process reports."""
    from llmsculpt.api._budget import fit_or_refuse
    from llmsculpt.api.prune import PruneOutcome, _report, check_prunable
    from llmsculpt.eval.memory_estimate import working_dtype
    from llmsculpt.measure.sharded import ShardedEngine
    from llmsculpt.methods import PruneContext, prune_model
    from llmsculpt.models.loading import _load_tokenizer
    from llmsculpt.run.processes import Processes
    from llmsculpt.run.shards import full_units, load_shards
    from llmsculpt.structures.shapes import architecture

    check_sharded(cfg)
    directory = checkpoint_directory(cfg.model)  # refusals before the processes meet
    procs = Processes(shard=True)
    directory = directory or converted_gguf(cfg.model, procs)
    micro = fit_or_refuse(str(directory), method=cfg.method, dtype=working_dtype(cfg.model, cfg.dtype),
                          n_samples=cfg.data.n_samples, seq_len=cfg.data.seq_len, budget=cfg.budget,
                          device=procs.device, command="this prune",
                          devices=procs.world)  # per process, before any weight is read
    # the dtype as one process would load it ("auto" for a GGUF: bf16, not its converted copy's fp32)
    model, net = load_shards(directory, dtype=working_dtype(cfg.model, cfg.dtype), device=procs.device)
    tokenizer = _load_tokenizer(str(directory))
    source = architecture(model)
    before = source.param_count()
    check_prunable(cfg, model.config, source, before)
    calib = calibration_fn(tokenizer, cfg.data, calib_text)
    calib(cfg.seed)  # fail on bad calibration data before any work
    engine = ShardedEngine(procs, net, resident=model, **({"micro_batch": micro} if micro else {}))
    del net  # the engine replaces its net at every pruning: no reference may keep the first one alive
    score = eval_text is not None
    ppl_before = _ppl(engine.net, tokenizer, eval_text, cfg.data.seq_len, eval_windows) if score else None
    t0 = time.perf_counter()
    pruned, result = prune_model(PruneContext(model=model, tokenizer=tokenizer, config=cfg, calibration=calib,
                                              progress=progress and procs.is_main, inplace=True, engine=engine,
                                              calib_text=calib_text))
    seconds = time.perf_counter() - t0
    after = architecture(pruned)
    report = _report(cfg, source, result, params_before=before, params_after=after.param_count(), seconds=seconds,
                     uniform=after.is_uniform) | {"processes": procs.world}
    if score:
        report |= {"ppl_before": ppl_before, "ppl_windows": eval_windows,
                   "ppl_after": _ppl(engine.net, tokenizer, eval_text, cfg.data.seq_len, eval_windows)}
    result.plan.meta.update({"method": cfg.method, "seed": cfg.seed})
    outcome = PruneOutcome(model=pruned, tokenizer=tokenizer, plan=result.plan, report=report, recipe=cfg,
                           main=procs.is_main)
    if out is not None:
        units = full_units(engine.net, pruned, keep=procs.is_main)  # collective: every process gathers
        if procs.is_main:
            outcome.save(out, overwrite=overwrite, plots=plots, write=lambda tmp: _write(units, pruned, tokenizer, tmp))
        else:
            for _ in units:
                pass
    procs.barrier()
    return outcome


def _ppl(net, tokenizer, text: str, seq_len: int, windows: int | None) -> float:
    from llmsculpt.eval.perplexity import perplexity
    from llmsculpt.run.shards import nll_through

    return perplexity(net, tokenizer, text, seq_len=seq_len, max_windows=windows, nll=nll_through).ppl  # chunked logits


def _write(units, model, tokenizer, directory: Path) -> dict:
    """The gathered units as one safetensors file each, an index over them, then the config and
    tokenizer from the pruned skeleton (as the layer-by-layer save writes them)."""
    from llmsculpt.io.layerwise_save import ShardFiles
    from llmsculpt.io.save import write_model_files
    from llmsculpt.models.spec import spec_for

    shards = ShardFiles(directory, len(spec_for(model).decoder_layers(model)) + 1)  # one per layer, one root unit
    for k, tensors in enumerate(units):
        shards.write(k, tensors)
    shards.write_index()
    return write_model_files(model, tokenizer, directory, weights=False)
