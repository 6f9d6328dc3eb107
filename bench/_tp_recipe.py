"""Torch-Pruning 1.6's own LLM recipe (examples/LLMs/prune_llm.py of VainF/Torch-Pruning), run from
the ``torch-pruning`` package: BasePruner, GroupMagnitudeImportance(p=2, mean), local (per-layer
uniform) ratio for heads, MLP channels and, unless ``hidden=False``, the hidden (stem) width;
lm_head ignored, head dims kept, round_to=4; then the model's config/attributes updated as the
recipe does. With ``heads=False`` (what runs here) q/k/v are ignored: on transformers 5's attention TP 1.6.1's
dependency search from q/k/v never terminates (its index mappings cycle), even on a 2-layer model.
``pruning_ratio`` is a per-dimension ratio; ``match_params`` bisects it to a
parameter target. Bench only: ``pip install torch-pruning==1.6.1``."""

from __future__ import annotations

import copy

import torch


def tp_prune(model, ratio: float, *, hidden: bool = True, heads: bool = False):
    import torch_pruning as tp

    cfg = model.config
    num_heads, ignored = {}, [model.lm_head]
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
            if not heads:  # TP 1.6.1's group search never ends from q/k/v on transformers 5 attention
                ignored += [m.q_proj, m.k_proj, m.v_proj]
    if not hidden:  # keep the stem width: block the hidden-channel groups at their roots
        ignored += [model.model.embed_tokens] + [m for n, m in model.named_modules()
                                                 if n.endswith(("o_proj", "down_proj", "norm", "layernorm"))]
    pruner = tp.pruner.BasePruner(
        model, example_inputs=torch.tensor([[1, 2, 3, 4]]),
        importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=ratio, ignored_layers=ignored,
        num_heads=num_heads, prune_num_heads=heads, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4,
    )
    for g in pruner.step(interactive=True):
        g.prune()
    cfg.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            heads = m.q_proj.out_features // m.head_dim
            kv = m.k_proj.out_features // m.head_dim
            m.num_key_value_groups = heads // kv
            cfg.num_attention_heads, cfg.num_key_value_heads = heads, kv
        elif name.endswith("mlp"):
            cfg.intermediate_size = m.gate_proj.out_features
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def match_params(model, target: int, *, hidden: bool = True, heads: bool = False, iters: int = 8):
    """Per-dimension ratio whose pruned model is nearest ``target`` params (bisection), and that model."""
    lo, hi, best = 0.0, 0.9, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        pruned = tp_prune(copy.deepcopy(model), mid, hidden=hidden, heads=heads)
        n = n_params(pruned)
        if best is None or abs(n - target) < abs(n_params(best[1]) - target):
            best = (mid, pruned)
        lo, hi = (mid, hi) if n > target else (lo, mid)
    return best
