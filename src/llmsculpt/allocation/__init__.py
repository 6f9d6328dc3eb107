"""How much to remove where: per-layer sparsities, converted to whole heads and channels."""

from llmsculpt.allocation.rounding import apportion, head_step
from llmsculpt.allocation.sparsity import (
    LayerBudget,
    PruneScope,
    counts_for_sparsity,
    select_plan,
    solve_uniform_offset,
)

__all__ = [
    "LayerBudget", "PruneScope", "apportion", "counts_for_sparsity", "head_step", "select_plan", "solve_uniform_offset",
]
