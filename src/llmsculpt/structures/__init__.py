"""Coupled structures of a decoder: K/V groups, query heads, MLP channels, hidden channels, layers."""

from llmsculpt.structures.shapes import Architecture, LayerShape, architecture

__all__ = ["Architecture", "LayerShape", "architecture"]
