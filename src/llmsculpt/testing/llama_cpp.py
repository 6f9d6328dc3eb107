"""Opening a GGUF file in llama.cpp (llama-cpp-python, the ``[export]`` extra) to check an export."""

from __future__ import annotations

import os


def open_llama(path: str | os.PathLike, *, extra_bufts: bool = False, **kw):
    """``llama_cpp.Llama``, with llama.cpp's extra (repacking, AMX) buffer types on only if
    ``extra_bufts``: its AMX q8_0 kernel segfaults on some CPUs (ggml-org/llama.cpp#20824), and the
    plain CPU kernels are what an export check needs."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = extra_bufts
        return p

    low.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), **kw)
    finally:
        low.llama_model_default_params = default
