"""The dtypes a saved checkpoint's safetensors files store (test_train.py, test_bf16_invariants.py)."""

from pathlib import Path

from safetensors import safe_open


def stored_dtypes(path) -> set[str]:
    """The dtypes of one safetensors file's tensors, as safetensors names them ("BF16", "F32", ...)."""
    with safe_open(str(path), "pt") as st:
        return {str(st.get_slice(k).get_dtype()) for k in st.keys()}


def weight_dtypes(directory) -> set[str]:
    """The dtypes of a saved model's weights: its ``model*.safetensors`` files (not
    plan.updates.safetensors, the plan's own fp32 values)."""
    return set().union(*(stored_dtypes(f) for f in Path(directory).glob("model*.safetensors")))
