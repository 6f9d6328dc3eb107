"""The architecture of a (possibly heterogeneous) model, read from its modules.

The modules are the single source of truth: configs are written *from* an :class:`Architecture`,
never the other way round, so a config can never disagree with the weights it describes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from llmsculpt.models.spec import ArchSpec, get_path, spec_for


@dataclass(frozen=True)
class LayerShape:
    """Shapes of one decoder layer. ``kv_map[h]`` is the K/V head that query head h attends with."""

    n_heads: int
    n_kv: int
    mlp: int
    kv_map: tuple[int, ...]

    @property
    def is_grouped_evenly(self) -> bool:
        """True when query heads are spread evenly and in order (plain GQA, no cluster attention)."""
        if self.n_heads % self.n_kv:
            return False
        rep = self.n_heads // self.n_kv
        return self.kv_map == tuple(h // rep for h in range(self.n_heads))

    def heads_of(self, kv: int) -> list[int]:
        return [h for h, j in enumerate(self.kv_map) if j == kv]


@dataclass(frozen=True)
class Architecture:
    """Everything needed to count parameters and write a config."""

    model_type: str
    vocab: int
    hidden: int
    head_dim: int
    layers: tuple[LayerShape, ...]
    tied: bool
    qkv_bias: bool
    o_bias: bool = False
    mlp_bias: bool = False  # gate/up biases
    down_bias: bool = False
    head_norms: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_uniform(self) -> bool:
        first = self.layers[0]
        return all(ls == first for ls in self.layers) and first.is_grouped_evenly

    def layer_params(self, ls: LayerShape) -> int:
        h, d = self.hidden, self.head_dim
        attn = h * d * (2 * ls.n_heads + 2 * ls.n_kv)
        if self.qkv_bias:
            attn += d * (ls.n_heads + 2 * ls.n_kv)
        if self.o_bias:
            attn += h
        if self.head_norms:
            attn += 2 * d
        mlp = 3 * h * ls.mlp + (2 * ls.mlp if self.mlp_bias else 0) + (h if self.down_bias else 0)
        return attn + mlp + 2 * h  # two RMSNorms

    def param_count(self) -> int:
        embed = self.vocab * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return embed + head + self.hidden + sum(self.layer_params(ls) for ls in self.layers)

    def min_param_count(self) -> int:
        """The smallest model head/channel pruning can reach: one head, one K/V head, one MLP channel per layer."""
        tiny = LayerShape(n_heads=1, n_kv=1, mlp=1, kv_map=(0,))
        return self.param_count() - sum(self.layer_params(ls) - self.layer_params(tiny) for ls in self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [
            {"n_heads": ls.n_heads, "n_kv": ls.n_kv, "mlp": ls.mlp, "kv_map": list(ls.kv_map)} for ls in self.layers
        ]
        d.pop("extra")
        return d


def layer_shape(spec: ArchSpec, layer: nn.Module, head_dim: int) -> LayerShape:
    q, k, _, _ = spec.qkvo(layer)
    n_heads = q.out_features // head_dim
    n_kv = k.out_features // head_dim
    kv_map = getattr(k, "kv_map", None)
    if kv_map is not None:
        kv_map = tuple(kv_map)
    else:
        rep = max(1, n_heads // max(1, n_kv))
        kv_map = tuple(h // rep for h in range(n_heads))
    _, _, down = spec.gate_up_down(layer)
    return LayerShape(n_heads=n_heads, n_kv=n_kv, mlp=down.in_features, kv_map=kv_map)


def head_dim_of(model: nn.Module) -> int:
    spec = spec_for(model)
    attn = spec.attention(spec.decoder_layers(model)[0])
    return int(attn.head_dim)


def architecture(model: nn.Module) -> Architecture:
    """Read the architecture of ``model`` from its modules."""
    spec = spec_for(model)
    hd = head_dim_of(model)
    layers = spec.decoder_layers(model)
    embed = get_path(model, spec.embed)
    lm_head = get_path(model, spec.lm_head)
    first = layers[0]
    _, _, _, o = spec.qkvo(first)
    gate, _, _ = spec.gate_up_down(first)
    q = spec.qkvo(first)[0]
    return Architecture(
        model_type=spec.model_type,
        vocab=embed.weight.shape[0],
        hidden=embed.weight.shape[1],
        head_dim=hd,
        layers=tuple(layer_shape(spec, layer, hd) for layer in layers),
        tied=lm_head.weight is embed.weight,
        qkv_bias=q.bias is not None,
        o_bias=o.bias is not None,
        mlp_bias=gate.bias is not None,
        down_bias=spec.gate_up_down(first)[2].bias is not None,
        head_norms=bool(spec.head_norms),
    )


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
