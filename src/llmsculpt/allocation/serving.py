"""Shapes a runtime serves exactly (``--serve``): the constraint the planners work under.

``serve`` names a runtime, and the planners only produce shapes it runs as they are, deciding under
the constraint rather than fixing a plan afterwards:

* ``any``: no constraint (every shape loads through ``llmsculpt.load``); the exporters refuse what
  their runtime cannot run, naming the ``--serve`` mode that avoids it.
* ``uniform``: every layer the same shape, so the output is a plain family checkpoint (no remote
  code anywhere). Attention and MLP are *tied*: all layers keep the same count, each its own
  lowest-scored units go. Adaptive pruning under it is iterative uniform pruning.
* ``vllm``: what ``export --format vllm`` writes without padding (io/export_vllm.py). vLLM's
  Nemotron-NAS route has one query-head count for all layers, so attention is tied (equal query
  and K/V heads in every layer) and the MLP widths are free; families that route has no room for
  (Qwen3: no q/k norms) are tied entirely. Chosen by measurement over padding the query heads of a
  free plan (what the export does for ``any``): at equal *served* parameters (80.7M of 134.5M,
  adaptive T=5, bench/serve_cost.py) held-out ppl is 294 tied vs 447 padded (the free plan at 40 %
  carries 57 padded heads, 4.7M served parameters, so it must be pruned to 43.5 % to cost the same).
* ``llamacpp``: what llama.cpp's ``deci`` GGUF loader accepts (io/export_gguf.py): per-layer heads,
  K/V heads and FFN widths for llama/mistral; qwen2/qwen3 tied entirely (llama.cpp has no per-layer
  graph with their biases / norms); no o_proj/MLP biases (FLAP) and no q/k/v biases on llama.
  Widths default to multiples of 32 (``--round-to``), so a q8_0 export quantises every matrix.

Refusals that depend on the model and method rather than on counts (FLAP's biases, a layer range
with tied shapes, a sliding window or a non-SiLU MLP for vLLM's route) happen before any measuring
(:func:`check_servable`), one line naming the reason and what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsculpt.allocation.rounding import allowed, head_step, nearest
from llmsculpt.config.base import SERVE_MODES, check_serve, parse_layers
from llmsculpt.errors import SculptError
from llmsculpt.structures.shapes import Architecture

__all__ = ["SERVE_MODES", "ServeRules", "check_servable", "serve_rules", "tie_budgets", "tie_drop", "tied_units"]

VLLM_PER_LAYER = ("llama", "mistral", "qwen2")  # families vLLM's Nemotron-NAS route can carry
GGUF_PER_LAYER = ("llama", "mistral")  # families llama.cpp's deci graph can carry
WHOLE_LAYER_METHODS = ("shortgpt",)  # remove whole layers: every shape stays as it was


@dataclass(frozen=True)
class ServeRules:
    """What a runtime needs of a plan: every layer the same attention shape / the same MLP width."""

    mode: str = "any"
    tie_attention: bool = False
    tie_mlp: bool = False

    @property
    def ties(self) -> bool:
        return self.tie_attention or self.tie_mlp


def serve_rules(arch: Architecture, mode: str) -> ServeRules:
    """The rules of ``mode`` for a model of ``arch``'s family."""
    check_serve(mode)
    if mode == "uniform":
        return ServeRules(mode, True, True)
    if mode == "vllm":
        per_layer = arch.model_type in VLLM_PER_LAYER and not arch.head_norms
        return ServeRules(mode, True, not per_layer)
    if mode == "llamacpp" and arch.model_type not in GGUF_PER_LAYER:
        return ServeRules(mode, True, True)
    return ServeRules(mode)


def _runtime(mode: str) -> str:
    return {"vllm": "vLLM", "llamacpp": "llama.cpp", "uniform": "a plain family checkpoint"}[mode]


def check_servable(model, mode: str, *, method: str | None = None, layers=None, attention: bool = True,
                   mlp: bool = True) -> ServeRules:
    """The rules for ``model`` under ``mode``, or a SculptError (one line) when no plan of ``method``
    could be served exactly; called before anything is measured."""
    from llmsculpt.structures.shapes import architecture

    if check_serve(mode) == "any":
        return ServeRules()
    arch = architecture(model)
    rules = serve_rules(arch, mode)
    cfg, where = model.config, f"--serve {mode}"
    if method == "flap" and (mode != "vllm" or rules.tie_mlp):
        raise SculptError(f"{where}: FLAP's bias compensation adds o_proj/down_proj biases, which "
                          f"{_runtime(mode)} cannot carry for this {arch.model_type} model; use --method adaptive "
                          f"(or --serve vllm for llama/mistral/qwen2, or --serve any)")
    if mode == "llamacpp" and arch.model_type in GGUF_PER_LAYER and arch.qkv_bias:
        raise SculptError(f"{where}: this {arch.model_type} model has q/k/v biases, which llama.cpp's llama/deci "
                          "graphs do not load; export it with --format hf (--serve any)")
    if mode == "vllm" and not rules.tie_mlp:
        act = getattr(cfg, "hidden_act", "silu")
        window = getattr(cfg, "sliding_window", None)
        sliding = window and (arch.model_type == "mistral" or getattr(cfg, "use_sliding_window", False)) and \
            window < getattr(cfg, "max_position_embeddings", window + 1)
        if act != "silu" or sliding:
            why = f"MLP activation {act!r} (SiLU only)" if act != "silu" else f"sliding-window attention ({window})"
            raise SculptError(f"{where}: vLLM's per-layer route has no {why}; use --serve uniform (vLLM serves "
                              "uniform shapes with the family's own code)")
    if not rules.ties or method in WHOLE_LAYER_METHODS:
        return rules
    n = len(arch.layers)
    chosen = parse_layers(layers, n)
    tied = (rules.tie_attention and attention) or (rules.tie_mlp and mlp)
    if tied and chosen is not None and sorted(set(chosen)) != list(range(n)):
        raise SculptError(f"{where}: every layer must keep the same {'shape' if rules.tie_mlp else 'attention'}, "
                          "so a layer range cannot be pruned alone; drop --layers"
                          f"{'' if rules.tie_mlp else ' or add --no-attention'} (or use --serve any)")
    first = arch.layers[0]
    for i, ls in enumerate(arch.layers):
        odd_attn = rules.tie_attention and attention and (ls.kv_map != first.kv_map or not ls.is_grouped_evenly)
        if odd_attn or (rules.tie_mlp and mlp and ls.mlp != first.mlp):
            raise SculptError(f"{where}: layer {i} already differs from layer 0 ({ls.n_heads} heads, {ls.n_kv} K/V, "
                              f"MLP {ls.mlp} vs {first.n_heads}, {first.n_kv}, {first.mlp}), so no plan can make them "
                              "equal; prune the original model, or use --serve any")
    return rules


def tie_budgets(arch: Architecture, budgets: dict, scope) -> None:
    """Make the layer budgets of ``scope.serve`` equal where its runtime needs it, in place.

    Tied attention keeps the allowed unit count nearest the layers' mean, and each layer's MLP takes
    the difference it gave or took, so every layer still lands near its own sparsity (adaptive
    offsets act on the MLP widths). Tied MLP widths keep the allowed width nearest the mean. The
    solver calls this at every trial sparsity; kept counts fall with it, so the bisection holds."""
    rules = serve_rules(arch, getattr(scope, "serve", "any"))
    if not budgets or not rules.ties:
        return
    from llmsculpt.allocation import sparsity as sp

    ids = sorted(budgets)
    first = arch.layers[ids[0]]
    n_units, per_unit = sp._attn_unit_params(arch, first, scope.attn_unit)
    per_channel = 3 * arch.hidden + (2 if arch.mlp_bias else 0)
    floor = sp._mlp_floor(first, scope)
    if rules.tie_attention and scope.attention:
        step = sp._attn_step(arch, first, scope)
        keep = nearest(sum(n_units - budgets[i].attn_units for i in ids) / len(ids),
                       allowed(n_units, step) if step else [n_units])
        for i in ids:
            b, ls = budgets[i], arch.layers[i]
            moved = (b.attn_units - (n_units - keep)) * per_unit  # > 0: the tie keeps more attention here
            b.attn_units = n_units - keep
            if scope.mlp:
                b.mlp_channels = min(max(b.mlp_channels + round(moved / per_channel), 0),
                                     ls.mlp - sp._mlp_floor(ls, scope))
    if rules.tie_mlp and scope.mlp:
        mean = sum(first.mlp - budgets[i].mlp_channels for i in ids) / len(ids)
        keep = nearest(mean, allowed(first.mlp, scope.round_to)) if scope.round_to > 1 else round(mean)
        for i in ids:
            budgets[i].mlp_channels = first.mlp - min(max(keep, floor), first.mlp)
    for i in ids:
        b = budgets[i]
        b.removed_params = b.attn_units * per_unit + b.mlp_channels * per_channel


def tie_drop(drop: dict, candidates: list[tuple], remove: int, arch: Architecture, scope) -> dict:
    """FLAP's global choice ``drop`` ({(layer, "attn"|"mlp"): [index]}) with tied attention: every layer
    (with query-head units: every K/V group) keeps the mean kept count, its lowest-scored units going;
    then MLP channels go globally, lowest first, until ``remove``. ``candidates``: (score, layer, kind,
    index, params)."""
    rules = serve_rules(arch, scope.serve)
    if not (rules.tie_attention and scope.attention):
        return drop
    ids = sorted({c[1] for c in candidates})
    per_part = 1 if scope.attn_unit == "kv" else arch.layers[ids[0]].n_kv  # units tie per K/V group
    parts: dict[tuple[int, int], list[tuple]] = {}
    for c in candidates:
        if c[2] == "attn":
            group = 0 if per_part == 1 else arch.layers[c[1]].kv_map[c[3]]
            parts.setdefault((c[1], group), []).append(c)
    kept = sum(len(u) for u in parts.values()) - sum(len(drop.get((i, "attn"), [])) for i in ids)
    keep = max(1, round(kept / len(parts)))
    out, removed = {}, 0
    for (i, _), units in sorted(parts.items()):
        gone = sorted(units, key=lambda c: c[0])[: len(units) - keep]
        if gone:
            out.setdefault((i, "attn"), []).extend(c[3] for c in gone)
            removed += sum(c[4] for c in gone)
    for score, i, kind, j, params in sorted((c for c in candidates if c[2] == "mlp"), key=lambda c: c[0]):
        if removed >= remove:
            break
        if len(out.get((i, "mlp"), [])) < arch.layers[i].mlp - 1:
            out.setdefault((i, "mlp"), []).append(j)
            removed += params
    return out


def tied_units(scores: list[tuple[float, tuple]], arch: Architecture, kind: str, budget: float, size: float,
               *, round_to: int = 1) -> tuple[list[tuple], float]:
    """Pruning-aware units of ``kind`` with tied shapes: the r lowest of every part (every K/V group of
    every layer for heads, every layer for MLP channels), r the fewest allowed that reach ``budget``.
    ``scores``: (saliency, (layer, index)). Returns the units and their mean saliency."""
    parts: dict[tuple, list[tuple[float, tuple]]] = {}
    for value, key in scores:
        ls = arch.layers[key[0]]
        parts.setdefault((key[0], ls.kv_map[key[1]]) if kind == "attention" else (key[0],), []).append((value, key))
    for part in parts.values():
        part.sort(key=lambda s: s[0])
    depth = min(len(p) for p in parts.values())
    first = arch.layers[0]
    step = head_step(round_to, arch.head_dim, first.n_kv) if kind == "attention" else round_to
    below = [k for k in allowed(depth, step) if k < depth]
    if not below:
        return [], float("inf")
    fits = [k for k in below if (depth - k) * len(parts) * size >= budget]
    k = max(fits) if fits else min(below)
    chosen = [item for part in parts.values() for item in part[: depth - k]]
    return [key for _, key in chosen], sum(v for v, _ in chosen) / max(1, len(chosen))
