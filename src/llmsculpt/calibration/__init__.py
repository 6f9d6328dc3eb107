"""Calibration data: text sources (embedded default, files, datasets) and seeded token samples."""

from llmsculpt.calibration.samples import calibration_batch, calibration_pool, tokenize_documents
from llmsculpt.calibration.text import default_documents, default_text, load_texts

__all__ = ["calibration_batch", "calibration_pool", "default_documents", "default_text", "load_texts", "tokenize_documents"]
