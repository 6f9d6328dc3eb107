"""What a metric or method declares it needs measured; the engine runs only the passes for that.

Magnitude needs nothing (no pass at all); Wanda ``act`` (one forward pass, no gradients); Taylor
``grad`` (forward+backward per micro-batch); Fisher ``grad_sq`` (one backward per sample); FLAP
``moments``; Adapt-Pruner and ShortGPT ``layer_change``; EfficientLLM ``grad`` with
``grad_params="saliency"`` and ``hessians`` for OBS/OBC.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from llmsculpt.errors import SculptError

GRAD_PARAMS = ("linear", "saliency", "hidden")
HESSIANS = ("outputs", "all")


@dataclass(frozen=True)
class Needs:
    """Everything a measuring pass can collect; the defaults collect nothing.

    ``grad``: dL/dW of the scored parameters (mean-loss gradient over the batch); ``grad_sq``:
    per-sample squared gradients (diagonal Fisher); ``act``: Σ x² per input column of every decoder
    Linear; ``layer_change``: a distance ("cosine", "euclidean", "manhattan") for how much each
    decoder layer changes its input; ``moments``: o_proj/down_proj input mean and variance;
    ``hessians``: X Xᵀ of the o_proj/down_proj inputs ("outputs"), plus q_proj's and gate_proj's
    ("all"); ``grad_params``: which parameters get gradients ("linear": the decoder layers' Linear
    weights and biases; "saliency": those and the input embedding; "hidden": those, the embedding,
    an untied lm_head and every norm, for hidden-channel scores); ``forward``: run a forward pass
    even if nothing else is needed.
    """

    grad: bool = False
    grad_sq: bool = False
    act: bool = False
    layer_change: str | None = None
    moments: bool = False
    hessians: str | None = None
    grad_params: str = "linear"
    forward: bool = False

    def __post_init__(self) -> None:
        if self.grad_params not in GRAD_PARAMS:
            raise SculptError(f"unknown grad_params {self.grad_params!r}; choose one of: {', '.join(GRAD_PARAMS)}")
        if self.hessians is not None and self.hessians not in HESSIANS:
            raise SculptError(f"unknown hessians {self.hessians!r}; choose one of: {', '.join(HESSIANS)}")
        if self.layer_change is not None:
            from llmsculpt.importance.layer_importance import check_distance

            check_distance(self.layer_change)

    @classmethod
    def for_metric(cls, metric, **extra) -> "Needs":
        """The needs a metric declares (``metric.needs``: "grad", "grad_sq", "act"), plus ``extra``."""
        declared = set(metric.needs)
        unknown = declared - {"grad", "grad_sq", "act"}
        if unknown:
            raise SculptError(f"metric {metric.name!r} declares unknown needs {', '.join(sorted(unknown))}")
        return cls(**{n: True for n in declared}, **extra)

    @property
    def wants_grad(self) -> bool:
        return self.grad or self.grad_sq

    @property
    def any(self) -> bool:
        """Whether any pass must run at all."""
        return any(getattr(self, f.name) for f in fields(self) if f.name != "grad_params")
