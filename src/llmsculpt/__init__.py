"""llmsculpt: carve small language models out of large ones by structured pruning.

Public verbs, one per command: :func:`prune`, :func:`evaluate`, :func:`accel`, :func:`search`,
:func:`finetune`, :func:`pretrain_prune`, :func:`export`, :func:`inspect`, :func:`bench_speed`, plus
:func:`load`. Each takes its command's recipe (``config=PruneConfig(...)``, ...) or the recipe's
fields as keywords. Heavy optional dependencies (optuna, peft, lm-eval, matplotlib) are imported only
by the features that need them.
"""

from llmsculpt.api import (Inspection, PruneOutcome, SearchOutcome, TrainOutcome, accel, bench_speed, evaluate, export,
                           finetune, inspect, load, pretrain_prune, prune, search)
from llmsculpt.config import (AccelConfig, DataConfig, EvalConfig, ExportConfig, FinetuneConfig, PretrainPruneConfig,
                              PruneConfig, SearchConfig)
from llmsculpt.errors import SculptError
from llmsculpt.plan import LayerPlan, Plan

__all__ = [
    "AccelConfig", "DataConfig", "EvalConfig", "ExportConfig", "FinetuneConfig", "Inspection", "LayerPlan", "Plan",
    "PretrainPruneConfig", "PruneConfig", "PruneOutcome", "SculptError", "SearchConfig", "SearchOutcome",
    "TrainOutcome", "accel", "bench_speed", "evaluate", "export", "finetune", "inspect", "load", "pretrain_prune",
    "prune", "search",
]
__version__ = "0.1.0"
