"""Human-readable tables of architectures (rich)."""

from __future__ import annotations

from llmsculpt.structures.shapes import Architecture


def architecture_rows(arch: Architecture) -> list[dict]:
    return [
        {"layer": i, "heads": ls.n_heads, "kv_heads": ls.n_kv, "mlp": ls.mlp, "params": arch.layer_params(ls)}
        for i, ls in enumerate(arch.layers)
    ]


def print_architecture(arch: Architecture, *, title: str = "", original: Architecture | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for col in ("layer", "heads", "kv heads", "mlp width", "params"):
        table.add_column(col, justify="right")
    if original is not None:
        table.add_column("kept", justify="right")
    for i, row in enumerate(architecture_rows(arch)):
        cells = [str(row["layer"]), str(row["heads"]), str(row["kv_heads"]), str(row["mlp"]), f"{row['params']:,}"]
        if original is not None and i < len(original.layers):
            cells.append(f"{row['params'] / original.layer_params(original.layers[i]):.0%}")
        table.add_row(*cells)
    console = Console()
    console.print(table)
    console.print(
        f"hidden {arch.hidden}, head_dim {arch.head_dim}, {len(arch.layers)} layers, "
        f"total params {arch.param_count():,}, {'uniform' if arch.is_uniform else 'heterogeneous'}"
    )
