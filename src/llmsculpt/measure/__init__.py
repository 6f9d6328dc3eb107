"""The measuring engine: the one place that registers hooks and runs measuring passes.

A metric or method declares what it needs (:class:`Needs`); an engine runs just those passes over a
batch and returns :class:`Measurements`. ``LocalEngine`` runs them on the model itself;
``llmsculpt.measure.sharded.ShardedEngine`` through a DDP/FSDP-wrapped model over several
processes, the main one deciding. Both answer ``decides``, ``agree(plan)`` and ``applied(model)``.
"""

from llmsculpt.measure.local import LocalEngine, Measurements, scored_parameters
from llmsculpt.measure.needs import Needs

__all__ = ["LocalEngine", "Measurements", "Needs", "scored_parameters"]
