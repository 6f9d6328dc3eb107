"""The run engine: schedules of pruning and training events, checkpoint/resume, several processes.

``run_accel`` (Adapt-Accel) and ``pretrain_prune`` (EfficientLLM pruning-aware training) are two
schedules over one loop (run/engine.py). Processes (run/processes.py) is the only place that knows
about ranks; run/fsdp.py holds the fully sharded (FSDP2) plumbing of training runs (a host copy on
the main process), run/shards.py the shard-resident model of a launched prune (no whole copy
anywhere); run/checkpoint.py the one checkpoint format.
"""

from llmsculpt.run.accel import run_accel
from llmsculpt.run.engine import Interrupted
from llmsculpt.run.pruning_aware import pretrain_prune

__all__ = ["Interrupted", "pretrain_prune", "run_accel"]
