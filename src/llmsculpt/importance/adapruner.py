"""AdaPruner's importance: I = α1·λ1·I_vector + α2·(I_element + λ2·I_fisher), from per-sample terms.

Every term is a sum over calibration samples of per-sample group scores, so per-sample terms can be
computed once for a pool of candidate samples and any subset combined exactly, without another
backward pass (what makes search trials cheap):
  - vector: |Σ_s Σ_group W·g_s|  (signed per-sample sums, abs after combining)
  - element: Σ_s Σ_group |W·g_s| (first-order, element-wise on per-sample gradients)
  - fisher:  Σ_s Σ_group ½·W²·g_s² (second-order, diagonal empirical Fisher)
Each combined term is divided by its mean MLP-channel score before mixing, so α and λ act on
comparable magnitudes whatever the model (our stand-in for the paper's fixed alignment factors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmsculpt.importance.base import GRAD, Metric, TensorStats
from llmsculpt.importance.fisher import Fisher
from llmsculpt.importance.groups import GroupReducer, GroupScores, LayerScores, score_groups
from llmsculpt.importance.taylor import TaylorElement
from llmsculpt.measure import LocalEngine, Needs


class _SignedTaylor(Metric):
    name = "taylor_signed"
    needs = frozenset({GRAD})

    def element(self, s: TensorStats) -> torch.Tensor:
        return s.weight * s.grad


TERMS = ("vector", "element", "fisher")


@dataclass
class SampleTerms:
    """Per-sample group scores of the three terms, for one calibration sample."""

    vector: GroupScores
    element: GroupScores
    fisher: GroupScores


def sample_terms(model, sample: torch.Tensor, *, engine=None) -> SampleTerms:
    """One forward+backward on one sample [seq] and its three per-group terms (the gradient is
    reduced to the three terms' vectors as it is produced)."""
    metrics = [_SignedTaylor(), TaylorElement(), Fisher()]
    stats = (engine or LocalEngine()).measure(model, sample[None], Needs(grad=True, grad_sq=True),
                                              reducer=GroupReducer(model, metrics))
    vector, element, fisher = (score_groups(model, stats, m) for m in metrics)
    return SampleTerms(vector=vector, element=element, fisher=fisher)


def _sum(scores: list[GroupScores]) -> GroupScores:
    layers = []
    for parts in zip(*(s.layers for s in scores)):
        layers.append(LayerScores(heads=sum(p.heads for p in parts), kv=sum(p.kv for p in parts), mlp=sum(p.mlp for p in parts)))
    return GroupScores(layers=layers)


def _map(g: GroupScores, fn) -> GroupScores:
    return GroupScores(layers=[LayerScores(fn(ls.heads), fn(ls.kv), fn(ls.mlp)) for ls in g.layers])


def _normalised(g: GroupScores) -> GroupScores:
    scale = torch.cat([ls.mlp for ls in g.layers]).abs().mean().clamp_min(1e-30)
    return _map(g, lambda t: t / scale)


def mix(terms: list[SampleTerms], *, alpha1: float, alpha2: float, lambda1: float, lambda2: float) -> GroupScores:
    """Combine the selected samples' terms into AdaPruner's importance."""
    vector = _normalised(_map(_sum([t.vector for t in terms]), torch.abs))
    element = _normalised(_sum([t.element for t in terms]))
    fisher = _normalised(_sum([t.fisher for t in terms]))
    layers = []
    for v, e, f in zip(vector.layers, element.layers, fisher.layers):
        comb = lambda a, b, c: alpha1 * lambda1 * a + alpha2 * (b + lambda2 * c)  # noqa: E731
        layers.append(LayerScores(comb(v.heads, e.heads, f.heads), comb(v.kv, e.kv, f.kv), comb(v.mlp, e.mlp, f.mlp)))
    return GroupScores(layers=layers)
