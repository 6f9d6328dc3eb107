"""llmsculpt: carve small language models out of large ones by structured pruning.

Public verbs: :func:`prune`, :func:`load`, :func:`evaluate`. Heavy optional dependencies (optuna,
peft, lm-eval, matplotlib) are imported only by the features that need them.
"""

from llmsculpt.api import PruneOutcome, evaluate, load, prune
from llmsculpt.config import DataConfig, PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.plan import LayerPlan, Plan

__all__ = ["DataConfig", "LayerPlan", "Plan", "PruneConfig", "PruneOutcome", "SculptError", "evaluate", "load", "prune"]
__version__ = "0.1.0"
