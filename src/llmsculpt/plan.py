"""The decision: which indices each structure keeps. Scoring and allocation produce a Plan; surgery
only consumes one. A plan is plain data with a JSON round-trip, so it can be inspected, saved next to
the model, replayed, or composed with a later plan (iterative pruning).

Indices are relative to the model the plan is applied to. ``None`` means "keep everything".

A plan may also carry weight ``updates`` that a method computed while deciding (FLAP's bias
compensation, EfficientLLM's OBS update): surgery applies them after the selection, so their
tensors have the shapes of the plan's *result*. ``to_dict`` lists them without their tensors
(JSON-safe); ``save``/``load`` keep the tensors in a safetensors sidecar beside the JSON
(``plan.json`` -> ``plan.updates.safetensors``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

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


MODULES = ("o_proj", "down_proj")  # the output-side Linears an update may touch
OPS = ("set", "add")


@dataclass
class Update:
    """Set or add ``value`` to ``module``'s ``param`` in decoder layer ``layer`` after the selection.

    ``layer`` is the layer's index in the model the plan applies to (like ``LayerPlan.index``);
    ``value`` has the parameter's shape in the plan's result. ``unit`` is the number of input
    columns per selectable unit (head_dim for o_proj, 1 for down_proj), which composition needs to
    carry an update through a later selection. ``value`` is None only for a plan read from JSON
    without its sidecar (such a plan cannot be applied). A bias update on a module without a bias
    gives every layer's ``module`` a zero bias first (FLAP's compensation; saved models then carry
    ``sculpt_output_bias``).
    """

    layer: int
    module: str
    param: str
    op: str
    value: torch.Tensor | None = None
    unit: int = 1

    def __post_init__(self) -> None:
        if self.module not in MODULES or self.param not in ("weight", "bias") or self.op not in OPS:
            raise SculptError(f"unsupported update {self.op} {self.module}.{self.param} (modules: {', '.join(MODULES)}; "
                              f"params: weight, bias; ops: {', '.join(OPS)})")

    def key(self, k: int) -> str:
        return f"{k}.layer{self.layer}.{self.module}.{self.param}"

    def describe(self) -> dict:
        shape = list(self.value.shape) if self.value is not None else None
        return {"layer": self.layer, "module": self.module, "param": self.param, "op": self.op, "unit": self.unit,
                "shape": shape}


@dataclass
class Plan:
    layers: list[LayerPlan]
    hidden: list[int] | None = None
    meta: dict = field(default_factory=dict)
    updates: list[Update] = field(default_factory=list)

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def keep_all(cls, arch: Architecture) -> "Plan":
        return cls(layers=[LayerPlan(index=i) for i in range(len(arch.layers))])

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe: the updates are described (shape, no values); ``save`` writes their tensors."""
        out = {"hidden": self.hidden, "layers": [asdict(lp) for lp in self.layers], "meta": self.meta}
        if self.updates:
            out["updates"] = [u.describe() for u in self.updates]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """The plan ``to_dict`` described; its updates (if any) have no values until ``load`` fills them."""
        try:
            layers = [LayerPlan(**lp) for lp in data["layers"]]
            updates = [Update(**{k: v for k, v in u.items() if k != "shape"}) for u in data.get("updates", [])]
            return cls(layers=layers, hidden=data.get("hidden"), meta=dict(data.get("meta", {})), updates=updates)
        except (KeyError, TypeError) as exc:
            raise SculptError(f"not a valid llmsculpt plan: {exc}") from exc

    def without_updates(self) -> "Plan":
        """The same selection without weight updates (e.g. to compose steps with training between)."""
        return replace(self, layers=[replace(lp) for lp in self.layers], meta=dict(self.meta), updates=[])

    def save(self, path: str | Path) -> None:
        """Write ``path`` (JSON) and, when the plan has updates, their tensors beside it."""
        from llmsculpt.io.files import dumps_json

        if any(u.value is None for u in self.updates):
            raise SculptError("cannot save a plan whose updates have no values (read without their sidecar)")
        path = Path(path)
        path.write_text(dumps_json(self.to_dict()))
        if self.updates:
            from safetensors.torch import save_file

            save_file({u.key(k): u.value.detach().cpu().contiguous() for k, u in enumerate(self.updates)},
                      str(sidecar(path)))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a plan written by ``save``, with its update tensors from the sidecar."""
        path = Path(path)
        try:
            plan = cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SculptError(f"cannot read plan {path}: {exc}") from exc
        if plan.updates:
            if not sidecar(path).is_file():
                raise SculptError(f"plan {path} has weight updates but their file {sidecar(path).name} is missing")
            from safetensors.torch import load_file

            tensors = load_file(str(sidecar(path)))
            for k, u in enumerate(plan.updates):
                u.value = tensors[u.key(k)]
        return plan

    # ---- semantics ------------------------------------------------------------------------
    def is_noop(self, arch: Architecture) -> bool:
        return self.resulting(arch) == arch and not any(lp.drop for lp in self.layers) and not self.updates

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
        biased = {u.module for u in self.updates if u.param == "bias"}  # surgery gives every layer this bias
        return replace(arch, hidden=hidden, layers=tuple(layers), o_bias=arch.o_bias or "o_proj" in biased,
                       down_bias=arch.down_bias or "down_proj" in biased)

    def compose(self, later: "Plan") -> "Plan":
        """One plan equivalent to applying ``self`` and then ``later`` (made on the result).

        Updates compose exactly: ``self``'s are carried through ``later``'s selection (sliced to the
        rows and columns it keeps, dropped with a dropped layer) and applied before ``later``'s. So
        a composed plan of pure pruning steps replays them. Steps with training between them cannot
        be replayed that way (training rewrites the weights an update set): a run engine composes
        ``step.without_updates()`` and keeps the trained weights instead.
        """
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
        position = {lp.index: k for k, lp in enumerate(kept)}
        carried = [c for u in self.updates if (c := _carry(u, later, position[u.layer])) is not None]
        moved = [replace(u, layer=kept[u.layer].index) for u in later.updates]
        return Plan(layers=out, hidden=hidden, meta={**self.meta, **later.meta}, updates=carried + moved)


def sidecar(path: Path) -> Path:
    """Where the update tensors of the plan saved at ``path`` live: plan.json -> plan.updates.safetensors."""
    return path.with_name(path.stem + ".updates.safetensors")


def _carry(u: Update, later: Plan, position: int) -> Update | None:
    """``u`` as it must be applied after ``later``'s selection (None: its layer is dropped)."""
    nxt = later.layers[position]
    if nxt.drop:
        return None
    value = u.value
    if value is not None:
        if later.hidden is not None:
            value = value.index_select(0, torch.as_tensor(sorted(later.hidden), dtype=torch.long))
        cols = nxt.heads if u.module == "o_proj" else nxt.mlp
        if u.param == "weight" and cols is not None:
            idx = [c * u.unit + d for c in sorted(cols) for d in range(u.unit)]
            value = value.index_select(1, torch.as_tensor(idx, dtype=torch.long))
    return replace(u, value=value)


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
