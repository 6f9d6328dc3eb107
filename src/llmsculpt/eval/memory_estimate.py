"""Predicted peak memory of a prune, from the config alone (the model is built on the meta device).

What a pass holds at its peak (see measure/local.py and eval/chunked_loss.py):

- ``runtime``: Python, torch, transformers, tokenizer and calibration text (CPU RSS only; measured
  with bench/memory.py on tiny models, where it is nearly everything). Only ``RUNTIME_PASS_CPU`` of
  it is resident while a pass runs (the output's writing and the report come after the pass's
  memory is freed), so a whole-model prune peaks at weights + the larger of the runtime and
  ``RUNTIME_PASS_CPU`` + the pass;
- ``weights``: parameters × bytes of the working dtype; over ``devices`` > 1 (a launched prune,
  run/shards.py) the decoder layers are split over the devices and the root unit (embedding, final
  norm, lm_head) is replicated;
- ``gathered`` (sharded over ``devices`` > 1): what FSDP2 gathers whole on every process during a
  pass: two decoder layers;
- ``gradients`` (Taylor methods: adaptive, uniform, sample_aware): streamed to group scores, so about
  one decoder layer's Linear gradients (+ fp32 products) at a time, plus an fp32 accumulator per
  scored parameter when a micro-batch below the sample count forces several backwards; sharded,
  one layer's whole gradient and its shard until the next layer's recomputation reduces it;
- ``activations``: what autograd keeps for one micro-batch: the gradient passes checkpoint the
  decoder layers (each layer's input, plus one layer's full set while it is recomputed; eager
  attention keeps heads × seq probabilities per token); forward-only methods keep one layer's;
- ``logits``: one chunk of ``CHUNK_ELEMENTS`` logits in the dtype, upcast to fp32, and its
  log-softmax (never batch × seq × vocabulary); gone before the backward builds up its gradients,
  so a pass holds the larger of the two (plus the accumulators of earlier backwards);
- for a training run (accel, pretrain-prune: :class:`Training`): gradients and AdamW moments of every
  parameter, a whole batch's activations, a teacher copy when distilling.

The micro-batch is the measuring engine's own choice unless a budget forces a smaller one
(api/_budget.py, which also refuses, before loading, a run that cannot fit).

Example:
    >>> e = estimate("tiny-llama", method="adaptive", dtype="bfloat16")
    >>> e.params, e.weights_bytes
    (139840, 279680)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from llmsculpt.errors import SculptError

RUNTIME_CPU = 750 * 2**20  # measured: a tiny-model prune peaks at 0.69–0.89 GB RSS on this CPU
# ... of which this much is resident while a measuring pass runs (the rest: the output's writing, the
# report, the plots, after the pass's memory is gone). Measured on the 0.5B Qwen2 shape, bf16 adaptive:
# 0.38 GiB RSS before the first weight is read, ~0.5 GiB above weights + pass at the peak (1, 2 and 4
# processes); confirmed on the default model (adaptive, FLAP: within 15 %, see tests/test_estimate.py)
RUNTIME_PASS_CPU = 480 * 2**20
FORWARD_MICRO_BATCH = 4  # LocalEngine's samples per forward pass
GRAD_METHODS = frozenset({"adaptive", "uniform", "sample_aware"})
FORWARD_METHODS = frozenset({"flap", "wanda-sp", "magnitude", "shortgpt"})
ADAM_BYTES = 8  # AdamW's two fp32 moments per trained parameter
MASTER_BYTES = 4  # the fp32 master copy of a bf16/fp16 trained parameter (train/mixed.py)


@dataclass(frozen=True)
class Training:
    """The training part of a run (accel, pretrain-prune): fp32 weights, their gradients and AdamW
    moments (``full``; LoRA trains next to nothing), activations of ``batch_size`` × ``seq_len``
    tokens with every layer kept for the backward, and a frozen ``teacher`` copy when distilling."""

    batch_size: int
    seq_len: int
    full: bool = True
    teacher: bool = False
    first_phase_kept: float = 1.0  # fraction of the parameters the first training phase trains (accel prunes first)


@dataclass
class Estimate:
    params: int
    weights_bytes: int
    peak_bytes: int
    breakdown: dict[str, int]
    micro_batch: int
    fits: bool | None = None
    budget_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_bytes(arch, ls, tokens: int, seq_len: int, item: int, *, backward: bool) -> int:
    """One decoder layer's working set for ``tokens`` tokens: with a backward, what autograd keeps
    (inputs of every matmul, q/k/v and rotated, attention probabilities, MLP products, fp32 norms)."""
    h, q, kv = arch.hidden, ls.n_heads * arch.head_dim, ls.n_kv * arch.head_dim
    if backward:
        values = 6 * h + 3 * q + 4 * kv + 5 * ls.mlp + 2 * ls.n_heads * seq_len
        return tokens * (item * values + 4 * 4 * h)
    return tokens * (item * (4 * h + 3 * ls.mlp + ls.n_heads * seq_len) + 4 * 2 * h)


def _activation_bytes(arch, tokens: int, seq_len: int, item: int, *, backward: bool, checkpoint: bool = True) -> int:
    """Activations of one micro-batch. A checkpointed backward (the measuring passes) keeps each
    layer's input plus one layer's full set while it is recomputed; an unchecked one (training)
    keeps every layer's full set; a forward pass one layer's working set."""
    per_layer = [_layer_bytes(arch, ls, tokens, seq_len, item, backward=backward) for ls in arch.layers]
    if not backward:
        return max(per_layer, default=0)
    if checkpoint:
        return len(arch.layers) * tokens * arch.hidden * item + max(per_layer, default=0)
    return sum(per_layer)


def architecture_of(name):
    """The architecture of ``name`` without reading a weight: a model object's own, a GGUF file's from
    its metadata, anything else from its config on the meta device."""
    from llmsculpt.structures.shapes import architecture

    if isinstance(name, torch.nn.Module):
        return architecture(name)
    from llmsculpt.models.loading import resolve_source

    kind, where = resolve_source(name)
    if kind == "gguf":
        from llmsculpt.io.headers import gguf_architecture

        return gguf_architecture(where)
    from llmsculpt.models.meta import meta_model

    return architecture(meta_model(name))


def available_host_memory() -> int | None:
    """Bytes the host can still give (MemAvailable of /proc/meminfo), None where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def working_dtype(name, dtype) -> torch.dtype:
    """``dtype`` as the run will use it: ``auto`` is the checkpoint's own (its config.json's dtype,
    bf16 for GGUF; a model object's own parameters)."""
    from llmsculpt.models.placement import parse_dtype, source_dtype

    parsed = parse_dtype(dtype)
    if parsed is not None:
        return parsed
    if isinstance(name, torch.nn.Module):
        return next(name.parameters()).dtype
    return source_dtype(name, None)


def scored_params(arch) -> int:
    """Parameters the gradient passes score (measure.scored_parameters): every decoder Linear's
    weight and bias, i.e. the decoder layers without their norms."""
    return sum(_layer_scored(arch, ls) for ls in arch.layers)


def _layer_scored(arch, ls) -> int:
    """One decoder layer's scored parameters: its parameters without its norms."""
    return arch.layer_params(ls) - 2 * arch.hidden - (2 * arch.head_dim if arch.head_norms else 0)


def _gradient_parts(arch, scored: int, item: int, devices: int, *, several: bool) -> tuple[int, int]:
    """Gradients live during a measuring pass, as (held from earlier backwards, built up during the
    backward); the breakdown's ``gradients`` is their sum. Each gradient is reduced to group scores as
    soon as its last backward produced it (measure/streaming.py), so one backward builds up about one
    layer's gradients (and their fp32 products); several backwards (a micro-batch below the sample
    count) also hold an fp32 accumulator per scored parameter, so a smaller micro-batch costs more,
    not less. Sharded over ``devices`` (measure/sharded.py): one layer's whole gradient while FSDP2
    reduce-scatters it and its shard until the next layer's recomputation reduces it; several
    backwards keep every shard's gradient (FSDP2 accumulates it) until the last.
    What a backward builds up starts after the loss's logits chunk is gone (the head's backward comes
    first), so the pass holds the larger of the two, not both (measured on the 0.5B Qwen2 shape, bf16
    adaptive, 2 and 4 processes: the sum predicted +38 %)."""
    largest = max(_layer_scored(arch, ls) for ls in arch.layers)
    if devices > 1:
        return (scored * item // devices if several else 0), largest * (item + 4) + largest * item // devices
    return (scored * 4 if several else 0), largest * (item + 4)


def _root_params(arch) -> int:
    """The root unit's parameters: the embedding, an untied lm_head and the final norm."""
    return arch.vocab * arch.hidden * (1 if arch.tied else 2) + arch.hidden


def _gathered_bytes(arch, item: int) -> int:
    """What a sharded pass holds whole on every process (FSDP2) besides the replicated root unit:
    two decoder layers (the running one and the next, prefetched), each twice while it is being
    gathered (the all-gather buffer and the parameters)."""
    layer = max(arch.layer_params(ls) for ls in arch.layers)
    return 2 * 2 * layer * item


def _weight_bytes(arch, params: int, item: int, devices: int) -> int:
    """Each device's weights: all of them on one; over several the root unit whole and a 1/``devices``
    share of the decoder layers (run/shards.py)."""
    if devices == 1:
        return params * item
    root = _root_params(arch)
    return root * item + (params - root) * item // devices


def engine_micro_batch(method: str, n_samples: int, seq_len: int, devices: int = 1) -> int:
    """The samples per pass (and process) the measuring engine chooses by itself: LocalEngine's
    (measure/local.py) a mean-gradient pass takes up to ``GRAD_TOKENS`` tokens at once
    (checkpointed), a forward pass 4 samples; over ``devices`` > 1 the sharded engine's
    (measure/sharded.micro_batch_for)."""
    from llmsculpt.measure.local import GRAD_TOKENS

    if devices > 1:
        from llmsculpt.measure.sharded import micro_batch_for

        return micro_batch_for(n_samples, seq_len, devices)
    if method in GRAD_METHODS:
        return max(1, min(n_samples, GRAD_TOKENS // seq_len))
    return min(FORWARD_MICRO_BATCH, n_samples)


def estimate(
    name,
    *,
    method: str = "adaptive",
    dtype: str | torch.dtype = "auto",
    n_samples: int = 10,
    seq_len: int = 128,
    devices: int = 1,
    device: str = "cpu",
    budget: int | None = None,
    micro_batch: int | None = None,
    training: Training | None = None,
    layer_by_layer: bool = False,
    eval_windows: int = 0,
) -> Estimate:
    """Predict the peak memory per device of ``method`` on the model ``name`` (a name or path: its
    config only; or a model object), with ``micro_batch`` samples per pass (default: the engine's own
    choice) and, for a training run, its ``training`` state (peak of the prune and the training phases)."""
    from llmsculpt.eval.chunked_loss import CHUNK_ELEMENTS

    if method not in GRAD_METHODS | FORWARD_METHODS:
        raise SculptError(f"no memory model for method {method!r}; known: {', '.join(sorted(GRAD_METHODS | FORWARD_METHODS))}")
    if min(n_samples, seq_len, devices) < 1:
        raise SculptError("--n-samples, --seq-len and --devices must be positive")
    torch_dtype = working_dtype(name, dtype)
    item = torch.empty((), dtype=torch_dtype).element_size()
    arch = architecture_of(name)
    params = arch.param_count()
    scored = scored_params(arch)
    backward = method in GRAD_METHODS
    engine_choice = engine_micro_batch(method, n_samples, seq_len, 1 if layer_by_layer else devices)
    micro = max(1, min(micro_batch or engine_choice, n_samples))
    tokens = micro * seq_len
    if layer_by_layer:
        if backward or training is not None:
            raise SculptError(f"layer by layer runs forward-only methods ({', '.join(sorted(FORWARD_METHODS))}), "
                              f"not {method}")
        parts = _layerwise_parts(arch, item, n_samples=n_samples, seq_len=seq_len, micro=micro, windows=eval_windows,
                                 cpu=torch.device(device).type == "cpu")
        working_set = parts["layer"] + parts["activations"] + parts["logits_chunk"]
        peak = parts["runtime"] + parts["weights"] + max(working_set, parts["copy_through"])  # not at once
        return Estimate(params=params, weights_bytes=params * item, peak_bytes=peak, breakdown=parts,
                        micro_batch=micro, fits=None if budget is None else peak <= budget, budget_bytes=budget)
    several = micro < -(-n_samples // devices)  # more than one backward per process
    held, built = _gradient_parts(arch, scored, item, devices, several=several) if backward else (0, 0)
    parts = {
        "runtime": RUNTIME_CPU if torch.device(device).type == "cpu" else 0,
        "weights": _weight_bytes(arch, params, item, devices),
        "gradients": held + built,
        "activations": _activation_bytes(arch, tokens, seq_len, item, backward=backward),
        "logits_chunk": min(CHUNK_ELEMENTS, tokens * arch.vocab) * (item + 4 + 4) * (2 if backward else 1),
    }
    if devices > 1:
        parts["gathered"] = _gathered_bytes(arch, item)
    prune_pass = held + max(built, parts["logits_chunk"]) + parts["activations"] + parts.get("gathered", 0)
    in_pass = RUNTIME_PASS_CPU if parts["runtime"] else 0
    peak = parts["weights"] + max(parts["runtime"], in_pass + prune_pass)  # the run's end, or its passes
    if training is not None:
        parts.update(_training_parts(arch, params, item, training, devices))
        train_pass = parts["training_state"] + parts["training_activations"]
        peak = parts["runtime"] + parts["weights"] + parts["teacher"] + max(prune_pass, train_pass)
    fits = None if budget is None else peak <= budget
    return Estimate(params=params, weights_bytes=params * item, peak_bytes=peak, breakdown=parts,
                    micro_batch=micro, fits=fits, budget_bytes=budget)


def _training_parts(arch, params: int, item: int, training: Training, devices: int) -> dict[str, int]:
    from llmsculpt.eval.chunked_loss import CHUNK_ELEMENTS

    tokens = training.batch_size * training.seq_len
    master = MASTER_BYTES if item < 4 else 0
    trained = int(params * training.first_phase_kept)  # the largest model that is trained
    state = trained * (item + ADAM_BYTES + master) // devices if training.full else 0
    acts = _activation_bytes(arch, tokens, training.seq_len, item, backward=True, checkpoint=False)
    logits = min(CHUNK_ELEMENTS, tokens * arch.vocab) * (item + 4 + 4) * 2
    return {"training_state": state, "training_activations": acts + logits,
            "teacher": params * item // devices if training.teacher else 0}


def _layerwise_parts(arch, item: int, *, n_samples: int, seq_len: int, micro: int, windows: int, cpu: bool,
                     same_dtype: bool = True) -> dict:
    """What the layer-by-layer prune holds at its peak (api/_layerwise.py, io/layerwise_save.py).

    Tensors read in their stored dtype stay memory-mapped: a resident layer costs its file pages, and
    the embedding only the rows the calibration tokens touch (counted as nothing); in another dtype
    every tensor read is a copy (the embedding whole). ``layer``: one decoder layer, plus, in the
    save, its pruned copy and one matrix's serialised bytes, or, while scoring, a matrix in fp32 and
    its element scores, whichever is larger. ``activations``: the carried hidden states of the whole
    batch (a layer's input and output) and one micro-batch's working set inside the layer. lm_head is
    resident (and wholly read) when perplexity is measured. Copying the embedding / lm_head into the
    output moves one chunk of bytes at a time (the whole tensor when it is converted)."""
    from llmsculpt.eval.chunked_loss import CHUNK_ELEMENTS
    from llmsculpt.io.layerwise_save import COPY_CHUNK

    embed = arch.vocab * arch.hidden * item
    head = embed if windows and not arch.tied else 0
    largest = max(arch.layer_params(ls) for ls in arch.layers) * item
    matrix = max(arch.hidden * max(ls.mlp, ls.n_heads * arch.head_dim) for ls in arch.layers)
    tokens = max(n_samples * seq_len, windows * seq_len)
    working = max(_layer_bytes(arch, ls, micro * seq_len, seq_len, item, backward=False) for ls in arch.layers)
    return {
        "runtime": RUNTIME_CPU if cpu else 0,
        "weights": (0 if same_dtype else embed) + head + arch.hidden * item,
        "layer": largest + max(2 * 4 * matrix, largest + matrix * item),
        "activations": 2 * tokens * arch.hidden * item + working,
        "logits_chunk": min(CHUNK_ELEMENTS, 8 * seq_len * arch.vocab) * (item + 8) if windows else 0,
        "copy_through": COPY_CHUNK if same_dtype else 2 * embed,
    }
