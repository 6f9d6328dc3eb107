"""Pure functions that apply a Plan to a model in place and rewrite its config."""

from llmsculpt.surgery.apply import apply_plan
from llmsculpt.surgery.config import sync_config

__all__ = ["apply_plan", "sync_config"]
