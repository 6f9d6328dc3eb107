"""The dense reference for surgery: zero the structures a plan removes, keep every shape.

A physically pruned model must give the same logits as the dense model masked this way. Hidden
channels are masked by zeroing them everywhere they enter the residual stream and every norm entry;
surgery's RMSNorm rescaling (``rms_rescale``) makes the two agree exactly when the model's RMSNorm
epsilon is negligible.
"""

from __future__ import annotations

import torch
from torch import nn

from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.plan import Plan
from llmsculpt.structures.shapes import architecture


def _dropped(sel, n: int) -> list[int]:
    return [] if sel is None else sorted(set(range(n)) - set(sel))


@torch.no_grad()
def mask_plan(model: nn.Module, plan: Plan) -> nn.Module:
    spec = spec_for(model)
    arch = architecture(model)
    hd = arch.head_dim
    for layer, lp, ls in zip(spec.decoder_layers(model), plan.layers, arch.layers):
        _, _, _, o = spec.qkvo(layer)
        _, _, down = spec.gate_up_down(layer)
        if lp.drop:  # a layer whose attention and MLP write nothing is the identity
            o.weight.zero_()
            down.weight.zero_()
            for lin in (o, down):
                if lin.bias is not None:
                    lin.bias.zero_()
            continue
        for h in _dropped(lp.heads, ls.n_heads):
            o.weight[:, h * hd : (h + 1) * hd] = 0
        for c in _dropped(lp.mlp, ls.mlp):
            down.weight[:, c] = 0
    if plan.hidden is not None:
        gone = _dropped(plan.hidden, arch.hidden)
        get_path(model, spec.embed).weight[:, gone] = 0
        norms = [get_path(model, spec.final_norm)]
        for layer in spec.decoder_layers(model):
            norms += [getattr(layer, n) for n in spec.layer_norms]
            _, _, _, o = spec.qkvo(layer)
            _, _, down = spec.gate_up_down(layer)
            o.weight[gone, :] = 0
            down.weight[gone, :] = 0
        for norm in norms:
            norm.weight[gone] = 0
    return model
