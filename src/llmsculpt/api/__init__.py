"""The public verbs, one per command: prune, evaluate, accel, search, finetune, pretrain_prune, export,
inspect, bench_speed, plus load. Each takes its command's recipe (``config=``) or the recipe's fields
as keywords, and the command line is a thin layer over it (cli/<command>.py).

Example:
    >>> import llmsculpt
    >>> out = llmsculpt.prune("tiny-llama", ratio=0.2, calib_text="some text " * 400)
    >>> out.report["params_after"] < out.report["params_before"]
    True
"""

from llmsculpt.api._common import TrainOutcome, load
from llmsculpt.api.prune import PruneOutcome, prune
from llmsculpt.api.search import SearchOutcome, search
from llmsculpt.api.export import export
from llmsculpt.api.tools import Inspection, bench_speed, evaluate, inspect
from llmsculpt.api.train import accel, finetune, pretrain_prune

__all__ = [
    "Inspection", "PruneOutcome", "SearchOutcome", "TrainOutcome", "accel", "bench_speed", "evaluate", "export",
    "finetune", "inspect", "load", "pretrain_prune", "prune", "search",
]
