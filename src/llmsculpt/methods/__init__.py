"""Published methods and baselines as thin orchestrations: name -> function(PruneContext)."""

from llmsculpt.methods.base import METHODS, PruneContext, PruneResult, get_method

__all__ = ["METHODS", "PruneContext", "PruneResult", "get_method"]
