"""Model loading (HF dir, hub id, GGUF, built-ins), per-family specs, heterogeneous modeling."""
