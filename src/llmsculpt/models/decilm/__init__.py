"""The Nemotron-NAS / DeciLM layout that ``sculpt export --format vllm`` writes for per-layer shapes.

``configuration_decilm.py`` and ``modeling_decilm.py`` are copied next to the exported weights, so
vLLM (config only) and transformers (``trust_remote_code=True``) load the directory with none of
llmsculpt installed. They are self-contained on purpose.
"""
