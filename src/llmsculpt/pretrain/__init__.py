"""Pruning-aware (continued) pretraining (EfficientLLM): saliency of mini-groups, OBS updates, loop."""
