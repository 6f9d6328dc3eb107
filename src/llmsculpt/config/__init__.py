"""Typed recipes, one dataclass per command, with a YAML round trip and unknown keys refused by name.

``PruneConfig`` (prune), ``SearchConfig`` (search), ``AccelConfig`` (accel), ``PretrainPruneConfig``
(pretrain-prune), ``FinetuneConfig`` (finetune), ``ExportConfig`` (export), ``EvalConfig`` (eval);
``DataConfig`` is prune's calibration data. Every one reads ``--config recipe.yaml`` and is saved
beside its command's output as ``recipe.yaml``. Example:

    >>> cfg = PruneConfig.from_dict({"method": "uniform", "ratio": 0.3})
    >>> cfg.with_overrides(seed=3, ratio=None).seed, cfg.ratio
    (3, 0.3)
"""

from llmsculpt.config.base import (Recipe, check_budget, check_ratio, check_round_to, parse_bytes, parse_count,
                                   parse_layers)
from llmsculpt.config.prune import DataConfig, PruneConfig, SearchConfig
from llmsculpt.config.tools import EvalConfig, ExportConfig
from llmsculpt.config.train import MINI_GROUP_TYPES, AccelConfig, FinetuneConfig, PretrainPruneConfig

__all__ = [
    "MINI_GROUP_TYPES", "AccelConfig", "DataConfig", "EvalConfig", "ExportConfig", "FinetuneConfig",
    "PretrainPruneConfig", "PruneConfig", "Recipe", "SearchConfig", "check_budget", "check_ratio", "check_round_to",
    "parse_bytes", "parse_count", "parse_layers",
]
