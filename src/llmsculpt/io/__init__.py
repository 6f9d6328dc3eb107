"""Saving pruned models (HF-compatible), reports, plots and exports."""
