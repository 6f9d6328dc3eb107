"""PNG pictures of what pruning did (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path

from llmsculpt.errors import require
from llmsculpt.structures.shapes import Architecture


def _pyplot():
    mpl = require("matplotlib", extra="plot", feature="plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and release a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_params(directory: Path, arch: Architecture, original: dict | None) -> Path:
    """Per-layer parameter count of the pruned model vs the original (Adapt-Pruner Fig. 1 style)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    pruned = [arch.layer_params(ls) for ls in arch.layers]
    if original:
        orig = Architecture(**{**original, "layers": ()})
        from llmsculpt.structures.shapes import LayerShape

        layers = [LayerShape(d["n_heads"], d["n_kv"], d["mlp"], tuple(d["kv_map"])) for d in original["layers"]]
        ax.bar(range(len(layers)), [orig.layer_params(ls) / 1e6 for ls in layers], color="#cccccc", label="original")
    ax.bar(range(len(pruned)), [p / 1e6 for p in pruned], color="#3b6ea8", label="pruned")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("parameters (M)")
    ax.legend()
    return save_figure(fig, directory / "layer_params.png")


def plot_layer_importance(directory: Path, steps: list[dict]) -> Path:
    """Layer importance per pruning step, the per-layer sparsity each step set, and (when the
    history has it) the realised per-layer sparsity over the steps as a heat map."""
    plt = _pyplot()
    realised = [st["layer_sparsity"] for st in steps if "layer_sparsity" in st]
    fig, axes = plt.subplots(1, 3 if realised else 2, figsize=(16 if realised else 11, 3.8))
    a1, a2 = axes[0], axes[1]
    cmap = plt.get_cmap("viridis")
    for k, st in enumerate(steps):
        color = cmap(k / max(1, len(steps) - 1))
        a1.plot(st["importance"], color=color, label=f"step {st['step']}" if k in (0, len(steps) - 1) else None)
        sp = {int(i): v for i, v in st["sparsity"].items()}
        a2.plot(sorted(sp), [sp[i] for i in sorted(sp)], color=color)
    a1.set_title("layer importance −cos(in, out)")
    a1.set_xlabel("decoder layer")
    a1.legend()
    a2.set_title("per-layer sparsity target of each step")
    a2.set_xlabel("decoder layer")
    if realised:
        ids = sorted(int(i) for i in realised[0])
        grid = [[float({int(i): v for i, v in r.items()}[i]) for i in ids] for r in realised]
        im = axes[2].imshow(grid, aspect="auto", cmap="magma", vmin=0, vmax=max(0.01, max(map(max, grid))),
                            extent=(ids[0] - 0.5, ids[-1] + 0.5, len(grid) + 0.5, 0.5))
        axes[2].set_title("realised per-layer sparsity over steps")
        axes[2].set_xlabel("decoder layer")
        axes[2].set_ylabel("step")
        fig.colorbar(im, ax=axes[2])
    return save_figure(fig, directory / "layer_importance.png")


def plot_report(directory: Path, arch: Architecture, report: dict) -> list[Path]:
    """All plots that the report supports, written into ``directory``."""
    directory = Path(directory)
    paths = [plot_layer_params(directory, arch, report.get("original_architecture"))]
    steps = (report.get("history") or {}).get("steps")
    if steps and "importance" in steps[0]:
        paths.append(plot_layer_importance(directory, steps))
    return paths


def plot_training(directory: Path, log: list[dict]) -> Path:
    """Loss and parameter count over training steps (Adapt-Accel, pruning-aware training)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    steps = [e["step"] for e in log]
    ax.plot(steps, [e["loss"] for e in log], color="#3b6ea8", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(steps, [e["params"] / 1e6 for e in log], color="#c0504d", label="params (M)")
    ax2.set_ylabel("parameters (M)")
    return save_figure(fig, Path(directory) / "training.png")


def plot_trajectory(directory: Path, log: list[dict], original_params: int) -> Path:
    """Saliency per parameter of the three types at each pruning step, and how much of each type
    has been removed over training (EfficientLLM's Figure 5, for this run)."""
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
