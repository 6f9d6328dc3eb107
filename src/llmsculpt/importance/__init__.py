"""Importance metrics (one per file) and group scoring over coupled structures."""

from llmsculpt.importance import fisher, magnitude, taylor, wanda  # noqa: F401  (registration)
from llmsculpt.importance.base import METRICS, Metric, TensorStats, get_metric

__all__ = ["METRICS", "Metric", "TensorStats", "get_metric"]
