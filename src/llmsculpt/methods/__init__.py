"""Published methods and baselines as planners over the measuring engine: name -> Method."""

from llmsculpt.methods.base import (
    METHODS,
    Method,
    PruneContext,
    PruneResult,
    check_options,
    get_method,
    method_names,
    prune_model,
)

__all__ = ["METHODS", "Method", "PruneContext", "PruneResult", "check_options", "get_method", "method_names",
           "prune_model"]
