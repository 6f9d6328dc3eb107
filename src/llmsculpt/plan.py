"""The decision: which indices each structure keeps. Scoring and allocation produce a Plan; surgery
only consumes one. A plan is plain data with a JSON round-trip, so it can be inspected, saved next to
the model, replayed, or composed with a later plan (iterative pruning).

Indices are relative to the model the plan is applied to. ``None`` means "keep everything".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from llmsculpt.errors import SculptError
from llmsculpt.structures.shapes import Architecture, LayerShape


@dataclass
class LayerPlan:
    """What layer ``index`` keeps. ``heads`` are query heads; a K/V head must keep >= 1 query head."""

    index: int
    drop: bool = False
    heads: list[int] | None = None
    kv_heads: list[int] | None = None
    mlp: list[int] | None = None


@dataclass
class Plan:
    layers: list[LayerPlan]
    hidden: list[int] | None = None
    meta: dict = field(default_factory=dict)

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def keep_all(cls, arch: Architecture) -> "Plan":
        return cls(layers=[LayerPlan(index=i) for i in range(len(arch.layers))])

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"hidden": self.hidden, "layers": [asdict(lp) for lp in self.layers], "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        try:
            layers = [LayerPlan(**lp) for lp in data["layers"]]
            return cls(layers=layers, hidden=data.get("hidden"), meta=dict(data.get("meta", {})))
        except (KeyError, TypeError) as exc:
            raise SculptError(f"not a valid llmsculpt plan: {exc}") from exc

    def save(self, path: str | Path) -> None:
        from llmsculpt.io.files import dumps_json

        Path(path).write_text(dumps_json(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SculptError(f"cannot read plan {path}: {exc}") from exc

    # ---- semantics ------------------------------------------------------------------------
    def is_noop(self, arch: Architecture) -> bool:
        return self.resulting(arch) == arch and not any(lp.drop for lp in self.layers)

    def validate(self, arch: Architecture) -> None:
        """Raise SculptError if the plan does not fit ``arch`` or would leave a structure empty."""
        if len(self.layers) != len(arch.layers):
            raise SculptError(f"plan has {len(self.layers)} layers, model has {len(arch.layers)}")
        if all(lp.drop for lp in self.layers):
            raise SculptError("plan removes every decoder layer")
        if self.hidden is not None:
            _check_indices(self.hidden, arch.hidden, "hidden channels")
        for lp, ls in zip(self.layers, arch.layers):
            if lp.drop:
                continue
            heads = _check_indices(lp.heads, ls.n_heads, f"layer {lp.index} heads")
            kvs = _check_indices(lp.kv_heads, ls.n_kv, f"layer {lp.index} K/V heads")
            _check_indices(lp.mlp, ls.mlp, f"layer {lp.index} MLP channels")
            served = {ls.kv_map[h] for h in heads}
            if served != set(kvs):
                raise SculptError(
                    f"layer {lp.index}: kept K/V heads {sorted(kvs)} must be exactly those serving the kept "
                    f"query heads {sorted(served)}"
                )

    def resulting(self, arch: Architecture) -> Architecture:
        """The architecture after applying this plan to ``arch``."""
        layers = []
        for lp, ls in zip(self.layers, arch.layers):
            if lp.drop:
                continue
            heads = sorted(lp.heads) if lp.heads is not None else list(range(ls.n_heads))
            kvs = sorted(lp.kv_heads) if lp.kv_heads is not None else list(range(ls.n_kv))
            remap = {j: i for i, j in enumerate(kvs)}
            kv_map = tuple(remap[ls.kv_map[h]] for h in heads)
            mlp = len(lp.mlp) if lp.mlp is not None else ls.mlp
            layers.append(LayerShape(n_heads=len(heads), n_kv=len(kvs), mlp=mlp, kv_map=kv_map))
        hidden = len(self.hidden) if self.hidden is not None else arch.hidden
        return replace(arch, hidden=hidden, layers=tuple(layers))

    def compose(self, later: "Plan") -> "Plan":
        """One plan equivalent to applying ``self`` and then ``later`` (made on the result)."""
        hidden = _compose_sel(self.hidden, later.hidden)
        kept = [lp for lp in self.layers if not lp.drop]
        if len(kept) != len(later.layers):
            raise SculptError("cannot compose plans: the later plan has a different layer count")
        out = [replace(lp) for lp in self.layers]
        for lp, nxt in zip(kept, later.layers):
            target = out[lp.index]
            if nxt.drop:
                out[lp.index] = LayerPlan(index=lp.index, drop=True)
                continue
            target.heads = _compose_sel(lp.heads, nxt.heads)
            target.kv_heads = _compose_sel(lp.kv_heads, nxt.kv_heads)
            target.mlp = _compose_sel(lp.mlp, nxt.mlp)
        return Plan(layers=out, hidden=hidden, meta={**self.meta, **later.meta})


def _compose_sel(first: list[int] | None, second: list[int] | None) -> list[int] | None:
    """Indices into the original kept by selecting ``second`` out of what ``first`` kept."""
    if second is None:
        return None if first is None else sorted(first)
    if first is None:
        return sorted(second)
    base = sorted(first)
    return [base[i] for i in sorted(second)]


def _check_indices(sel, n: int, what: str) -> list[int]:
    if sel is None:
        return list(range(n))
    if len(sel) == 0:
        raise SculptError(f"{what}: would remove all {n}; at least one must stay")
    if len(set(sel)) != len(sel) or min(sel) < 0 or max(sel) >= n:
        raise SculptError(f"{what}: indices must be unique and in [0, {n}), got {sorted(sel)[:8]}...")
    return sorted(sel)
