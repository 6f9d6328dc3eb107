"""Small per-concern config dataclasses with validation and a YAML round-trip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from llmsculpt.errors import SculptError


def parse_count(value: str | int | float | None) -> int | None:
    """'90M' -> 90_000_000, '1.5B' -> 1_500_000_000, '1200000' -> 1200000."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = str(value).strip().upper().replace("_", "").replace(",", "")
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if mult > 1 else text) * mult)
    except ValueError:
        raise SculptError(f"cannot read parameter count {value!r}; write e.g. 90M, 1.2B or 90000000") from None


def parse_layers(value: str | list | None, n_layers: int | None = None) -> tuple[int, ...] | None:
    """'4-29' (inclusive), '0,3,5', 'all' or None -> layer indices."""
    if value is None or value == "all":
        return None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    out: list[int] = []
    try:
        for part in str(value).split(","):
            if "-" in part:
                a, b = part.split("-")
                out += range(int(a), int(b) + 1)
            else:
                out.append(int(part))
    except ValueError:
        raise SculptError(f"cannot read layer range {value!r}; write e.g. 4-29 or 0,1,2") from None
    return tuple(out)


def check_round_to(value) -> int:
    """``round_to`` as given, if it is a positive integer (1: no rounding); else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SculptError(
            f"round_to must be a positive integer (1: no rounding; 32 suits llama.cpp's quantisation), got {value!r}"
        )
    return value


@dataclass
class DataConfig:
    """Calibration data: a text/JSONL file, an HF dataset name, or None for the embedded default."""

    calib: str | None = None
    n_samples: int = 10
    seq_len: int = 128
    min_length: int | None = None

    def __post_init__(self):
        if self.n_samples < 1:
            raise SculptError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.seq_len < 2:
            raise SculptError(f"seq_len must be >= 2, got {self.seq_len}")


@dataclass
class PruneConfig:
    """Everything ``sculpt prune`` decides with. Method-specific knobs live in ``options``."""

    model: str | None = None
    method: str = "adaptive"  # beats uniform on the default model (bench/adaptive_vs_uniform.py)
    ratio: float | None = None
    target_params: int | str | None = None
    metric: str = "taylor"
    aggregation: str = "sum"
    layers: str | list | None = None  # which layers may be pruned; None = all
    attention: bool = True
    mlp: bool = True
    attn_unit: str = "kv"
    # attention/MLP split of a layer's sparsity: proportional | importance; None = the method's
    # default (uniform and its baselines: proportional, as LLM-Pruner; adaptive: importance)
    split: str | None = None
    seed: int = 0
    # kept MLP widths and query heads × head_dim are multiples of this (allocation/rounding.py); 1: any
    round_to: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.target_params = parse_count(self.target_params)
        if self.ratio is not None and self.target_params is not None:
            raise SculptError("give either ratio or target_params, not both")
        if self.ratio is None and self.target_params is None:
            self.ratio = 0.2
        if self.ratio is not None and not 0.0 <= float(self.ratio) < 1.0:
            raise SculptError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.target_params is not None and self.target_params <= 0:
            raise SculptError(f"target_params must be positive, got {self.target_params}")
        if self.attn_unit not in ("kv", "head"):
            raise SculptError(f"attn_unit must be 'kv' or 'head', got {self.attn_unit!r}")
        check_round_to(self.round_to)

    def removal_target(self, original_params: int) -> int:
        """Number of parameters to remove from a model of ``original_params``."""
        if self.target_params is not None:
            if self.target_params >= original_params:
                raise SculptError(
                    f"target {self.target_params:,} params is not smaller than the model ({original_params:,})"
                )
            return original_params - self.target_params
        return int(round(float(self.ratio) * original_params))

    # ---- YAML ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SculptError(f"unknown prune config keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PruneConfig":
        from llmsculpt.io.files import read_yaml

        data = read_yaml(path, what="config")
        return cls.from_dict(data.get("prune", data))


# mini-group types of pruning-aware training (EfficientLLM)
MINI_GROUP_TYPES = ("attention", "mlp", "stem")


@dataclass
class AccelConfig:
    """Adapt-Accel: phases of pruning then recovery training (``sculpt accel``)."""

    target_params: int
    phases: int = 4
    data_allocation: str = "linear"
    batch_size: int = 4
    lr: float = 2e-5
    min_lr: float = 2e-6
    schedule: str = "wsd"
    mode: str = "full"  # full | lora
    distill: bool = False
    temperature: float = 2.0
    distill_weight: float = 0.5
    prune_method: str = "adaptive"
    prune_steps: int = 2
    calib_samples: int = 8
    calib_len: int = 128
    checkpoint_every: int = 50
    optimizer_state: str = "reset"  # reset | carry: AdamW moments across a pruning (train/optim_carry.py)
    seed: int = 0
    round_to: int = 1  # every phase's plan keeps MLP widths and query heads × head_dim multiples of this

    def __post_init__(self):
        if self.mode not in ("full", "lora"):
            raise SculptError(f"mode must be full or lora, got {self.mode!r}")
        if self.optimizer_state not in ("reset", "carry"):
            raise SculptError(f"optimizer_state must be reset or carry, got {self.optimizer_state!r}")
        if self.batch_size < 1 or self.phases < 1:
            raise SculptError("batch size and phases must be >= 1")
        check_round_to(self.round_to)


@dataclass
class PretrainPruneConfig:
    """EfficientLLM pruning-aware training to a parameter budget (``sculpt pretrain-prune``)."""

    target_params: int
    ratio: str = "1:1"  # pruning steps : training steps
    quantum: float = 0.02  # fraction of the original parameters removed per pruning step
    metric: str = "taylor"
    types: tuple[str, ...] = MINI_GROUP_TYPES
    fixed_order: tuple[str, ...] | None = None  # e.g. ("stem", "attention", "mlp"), cycled
    obs: bool = False
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-5
    continue_steps: int = 0
    seed: int = 0
    round_to: int = 1  # pruned widths (hidden, MLP, query heads × head_dim) multiples of this; 1: any

    def __post_init__(self):
        try:
            self.prune_every, self.train_every = (int(x) for x in self.ratio.split(":"))
        except ValueError:
            raise SculptError(f"ratio must look like 4:1 (pruning:training steps), got {self.ratio!r}") from None
        if self.prune_every < 1 or self.train_every < 0 or not 0 < self.quantum < 1:
            raise SculptError("need at least one pruning step per cycle and 0 < quantum < 1")
        bad = set(self.types) - set(MINI_GROUP_TYPES) | set(self.fixed_order or ()) - set(MINI_GROUP_TYPES)
        if bad:
            raise SculptError(f"unknown mini-group types {sorted(bad)}; choose from {', '.join(MINI_GROUP_TYPES)}")
        check_round_to(self.round_to)
