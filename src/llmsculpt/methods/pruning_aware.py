"""EfficientLLM's pruning-aware (continued) pretraining, as a method of the toolkit.

The loop lives in :mod:`llmsculpt.pretrain.loop`; this module adds the trajectory picture. See
``sculpt pretrain-prune``.
"""

from __future__ import annotations

from pathlib import Path

from llmsculpt.config import PretrainPruneConfig
from llmsculpt.pretrain.loop import Interrupted, pretrain_prune

__all__ = ["Interrupted", "PretrainPruneConfig", "plot_trajectory", "pretrain_prune"]


def plot_trajectory(directory: Path, log: list[dict], original_params: int) -> Path:
    """Saliency per parameter of the three types at each pruning step, and how much of each type
    has been removed over training (the paper's Figure 5, for this run)."""
    from llmsculpt.io.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    prune = [e for e in log if e["type"] != "train"]
    for kind, color in (("attention", "#3b6ea8"), ("mlp", "#c0504d"), ("stem", "#4f8a3c")):
        xs = [e["tokens"] for e in prune if kind in e["saliency"]]
        a1.plot(xs, [e["saliency"][kind] for e in prune if kind in e["saliency"]], color=color, label=kind)
        removed, total, ys = 0, [], []
        for e in prune:
            removed += e["removed"] if e["type"] == kind else 0
            total.append(e["tokens"])
            ys.append(removed)
        a2.step(total, ys, where="post", color=color, label=kind)
    a1.set_yscale("log")
    a1.set_xlabel("tokens seen")
    a1.set_title("saliency per parameter of the cheapest step")
    a1.legend()
    a2.set_xlabel("tokens seen")
    a2.set_title("mini-groups removed")
    a2.legend()
    return save_figure(fig, Path(directory) / "trajectory.png")
