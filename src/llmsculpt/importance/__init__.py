"""Importance maths: metrics (one per file), group scoring over coupled structures (groups.py),
AdaPruner's per-sample terms (adapruner.py), FLAP's fluctuation, layer importance, and
EfficientLLM's saliency and OBS update (saliency.py, obs.py). The passes that feed them live in
:mod:`llmsculpt.measure`."""

from llmsculpt.importance import fisher, magnitude, taylor, wanda  # noqa: F401  (registration)
from llmsculpt.importance.base import METRICS, Metric, TensorStats, get_metric

__all__ = ["METRICS", "Metric", "TensorStats", "get_metric"]
