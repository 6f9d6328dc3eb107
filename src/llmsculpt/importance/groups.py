"""Score coupled groups from element scores: query heads, K/V groups, MLP channels, hidden channels.

For each tensor of a group, the element scores in the group's slice are summed (for a signed
metric the sum is then made absolute); the per-tensor values are aggregated across the coupled
tensors with ``sum``, ``mean``, ``max``, ``prod`` (as a geometric mean: same ranking, no
overflow) or ``last`` (the output-side tensor: o_proj / down_proj).

Each tensor's part of a group score is one vector — its element scores summed along rows or
columns in blocks (``_reduce``) — so a gradient metric can be reduced while the gradients are being
produced: :class:`GroupReducer` is the measuring engine's ``reducer``; it turns each parameter's
complete gradient into those vectors (``Measurements.reduced[metric.name]``), and ``score_groups``
uses them in place of the gradients, with the same arithmetic in the same order (identical scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.importance.base import Metric, TensorStats
from llmsculpt.measure.local import Measurements
from llmsculpt.models.spec import get_path, spec_for
from llmsculpt.structures.shapes import architecture

AGGREGATIONS = ("sum", "mean", "max", "prod", "last")


@dataclass
class LayerScores:
    heads: torch.Tensor  # [n_heads]
    kv: torch.Tensor  # [n_kv]
    mlp: torch.Tensor  # [mlp]


@dataclass
class GroupScores:
    layers: list[LayerScores]
    hidden: torch.Tensor | None = None


def aggregate(per_tensor: list[torch.Tensor], how: str) -> torch.Tensor:
    """Combine per-tensor group scores [n] each (the last one is the output-side tensor)."""
    stacked = torch.stack([t.float() for t in per_tensor])
    if how == "sum":
        return stacked.sum(0)
    if how == "mean":
        return stacked.mean(0)
    if how == "max":
        return stacked.max(0).values
    if how == "prod":
        return stacked.clamp_min(1e-30).log().mean(0).exp()
    if how == "last":
        return stacked[-1]
    raise SculptError(f"unknown aggregation {how!r}; choose one of: {', '.join(AGGREGATIONS)}")


def along(e: torch.Tensor, dim: int) -> torch.Tensor:
    """Element scores summed over everything but ``dim``: one value per row (0) or column (1). Sums of
    a matrix's row shards (per column) or the concatenation of its row shards' values (per row)
    give the whole matrix's, which is how a sharded engine reduces its shards (measure/sharded.py)."""
    return e.float().sum(dim=1 - dim) if e.dim() == 2 else e.float()


def _reduce(e: torch.Tensor, dim: int, size: int, signed: bool) -> torch.Tensor:
    """Sum element scores over everything but ``dim``, then over consecutive blocks of ``size``."""
    v = along(e, dim).reshape(-1, size).sum(1)
    return v.abs() if signed else v


def tensor_reductions(model: nn.Module, *, hidden: bool = False) -> dict[str, list[tuple[int, int]]]:
    """Parameter name -> the (dim, block size) of each vector ``score_groups`` takes from it: q/k/v
    weights and biases by output rows in heads, o_proj by input columns in heads, gate/up by rows,
    down_proj by columns (one channel each). With ``hidden`` also the hidden-channel vectors: the
    input columns of q/k/v/gate/up, the output rows (and biases) of o/down, the embedding's and
    an untied lm_head's columns and every norm's entries (``_hidden_scores``)."""
    spec, hd = spec_for(model), architecture(model).head_dim
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, list[tuple[int, int]]] = {}

    def add(param, dim: int, size: int) -> None:
        out.setdefault(names[id(param)], []).append((dim, size))

    for layer in spec.decoder_layers(model):
        q, k, v, o = spec.qkvo(layer)
        gate, up, down = spec.gate_up_down(layer)
        for lin, dim, size in ((q, 0, hd), (k, 0, hd), (v, 0, hd), (o, 1, hd), (gate, 0, 1), (up, 0, 1), (down, 1, 1)):
            add(lin.weight, dim, size)
            if dim == 0 and lin.bias is not None:
                add(lin.bias, 0, size)
        if hidden:
            for lin in (q, k, v, gate, up):
                add(lin.weight, 1, 1)
            for lin in (o, down):
                add(lin.weight, 0, 1)
                if lin.bias is not None:
                    add(lin.bias, 0, 1)
            for n in spec.layer_norms:
                add(getattr(layer, n).weight, 0, 1)
    if hidden:
        embed, lm_head = get_path(model, spec.embed), get_path(model, spec.lm_head)
        add(embed.weight, 1, 1)
        if lm_head.weight is not embed.weight:
            add(lm_head.weight, 1, 1)
        add(get_path(model, spec.final_norm).weight, 0, 1)
    return out


class GroupReducer:
    """The engine's reducer for gradient metrics (``needs`` within grad / grad_sq): each complete
    gradient becomes, per metric, the one vector ``score_groups`` needs from that tensor, keyed
    (parameter name, dim, size) under ``metric.name``; the gradient itself is then dropped. With
    ``hidden`` it also keeps the hidden-channel vectors (the engine must then give the embedding,
    lm_head and norms gradients: ``Needs(grad_params="hidden")``)."""

    def __init__(self, model: nn.Module, metrics: list[Metric], *, hidden: bool = False) -> None:
        self.metrics = metrics
        self.plan = tensor_reductions(model, hidden=hidden)
        self.names = set(self.plan)

    @staticmethod
    def handles(metric: Metric) -> bool:
        """Whether ``metric`` can be reduced while the gradients flow (it needs nothing else)."""
        return bool(metric.needs) and set(metric.needs) <= {"grad", "grad_sq"}

    def __call__(self, name: str, param: torch.Tensor, grad: torch.Tensor | None,
                 grad_sq: torch.Tensor | None) -> dict[str, dict]:
        s = TensorStats(weight=param.detach().float(), grad=grad.float() if grad is not None else None,
                        grad_sq=grad_sq.float() if grad_sq is not None else None)
        out = {}
        for m in self.metrics:
            e = m.element(s)
            out[m.name] = {(name, dim, size): _reduce(e, dim, size, False) for dim, size in self.plan[name]}
        return out


class Scorer:
    def __init__(self, model: nn.Module, stats: Measurements, metric: Metric):
        self.metric, self.stats = metric, stats
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.reduced = getattr(stats, "reduced", {}).get(metric.name, {})

    def vector(self, param: torch.Tensor, module: nn.Module | None, dim: int, size: int) -> torch.Tensor:
        """``param``'s element scores reduced along ``dim`` in blocks of ``size`` (unsigned sums),
        from the engine's streamed vectors when it produced them."""
        got = self.reduced.get((self.names[id(param)], dim, size))
        return got if got is not None else _reduce(self.element(param, module), dim, size, False)

    def element(self, param: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        name = self.names[id(param)]
        act = self.stats.act_sq.get(self.module_names.get(id(module), "")) if module is not None else None
        grad, grad_sq = self.stats.grad.get(name), self.stats.grad_sq.get(name)
        s = TensorStats(  # scores in fp32 whatever the weights' dtype (a no-op for fp32 weights)
            weight=param.detach().float(),
            grad=grad.float() if grad is not None else None,
            grad_sq=grad_sq.float() if grad_sq is not None else None,
            act_sq=act if param.dim() == 2 else None,
        )
        return self.metric.element(s)

    def rows(self, lin: nn.Linear, size: int) -> torch.Tensor:
        out = self.vector(lin.weight, lin, 0, size)
        if lin.bias is not None:
            out = out + self.vector(lin.bias, None, 0, size)
        return out.abs() if self.metric.signed else out

    def cols(self, lin: nn.Linear, size: int) -> torch.Tensor:
        out = self.vector(lin.weight, lin, 1, size)
        return out.abs() if self.metric.signed else out


def score_groups(
    model: nn.Module, stats: Measurements, metric: Metric, *, aggregation: str = "sum", hidden: bool = False
) -> GroupScores:
    """Score every query head, K/V group and MLP channel (and hidden channel if asked)."""
    if aggregation not in AGGREGATIONS:
        raise SculptError(f"unknown aggregation {aggregation!r}; choose one of: {', '.join(AGGREGATIONS)}")
    spec = spec_for(model)
    arch = architecture(model)
    sc = Scorer(model, stats, metric)
    with torch.no_grad():
        out = [layer_scores(sc, spec, layer, ls, arch.head_dim, aggregation)
               for layer, ls in zip(spec.decoder_layers(model), arch.layers)]
        hid = _hidden_scores(model, spec, sc, aggregation) if hidden else None
    return GroupScores(layers=out, hidden=hid)


def layer_scores(sc: Scorer, spec, layer: nn.Module, ls, hd: int, aggregation: str = "sum") -> LayerScores:
    """One decoder layer's query-head, K/V-group and MLP-channel scores (the layer-by-layer engine
    calls this while the layer's weights are resident)."""
    with torch.no_grad():
        q, k, v, o = spec.qkvo(layer)
        q_h, o_h = sc.rows(q, hd), sc.cols(o, hd)
        heads = aggregate([q_h, o_h], aggregation)
        k_h, v_h = sc.rows(k, hd), sc.rows(v, hd)
        index = torch.tensor(ls.kv_map, device=q_h.device)
        q_kv = torch.zeros(ls.n_kv, device=q_h.device).index_add_(0, index, q_h)
        o_kv = torch.zeros(ls.n_kv, device=q_h.device).index_add_(0, index, o_h)
        kv = aggregate([q_kv, k_h, v_h, o_kv], aggregation)
        gate, up, down = spec.gate_up_down(layer)
        mlp = aggregate([sc.rows(gate, 1), sc.rows(up, 1), sc.cols(down, 1)], aggregation)
    return LayerScores(heads=heads.cpu(), kv=kv.cpu(), mlp=mlp.cpu())


def _hidden_scores(model, spec, sc: Scorer, aggregation: str) -> torch.Tensor:
    """Hidden channel d: the embedding's column d, every norm's entry d, the input column d of
    q/k/v/gate/up, the output row d of o/down (with bias) and an untied lm_head's column d."""

    def entries(param) -> torch.Tensor:  # a norm / the embedding, with no module (no activations)
        out = sc.vector(param, None, 1 if param.dim() == 2 else 0, 1)
        return out.abs() if sc.metric.signed else out

    per = []
    embed = get_path(model, spec.embed)
    per.append(entries(embed.weight))
    for layer in spec.decoder_layers(model):
        for n in spec.layer_norms:
            per.append(entries(getattr(layer, n).weight))
        q, k, v, o = spec.qkvo(layer)
        gate, up, down = spec.gate_up_down(layer)
        per += [sc.cols(lin, 1) for lin in (q, k, v, gate, up)]
        per += [sc.rows(o, 1), sc.rows(down, 1)]
    per.append(entries(get_path(model, spec.final_norm).weight))
    lm_head = get_path(model, spec.lm_head)
    if lm_head.weight is not embed.weight:
        per.append(sc.cols(lm_head, 1))
    return aggregate(per, aggregation).cpu()
