"""Data files that registry packages ship (the default model and text), found without importing
the package that carries them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmsculpt.errors import SculptError


def package_file(package: str, relative: str, *, what: str, install: str) -> Path:
    """Path of ``relative`` inside installed ``package``; a SculptError saying how to install it."""
    spec = importlib.util.find_spec(package)  # locate only: importing may need heavy dependencies
    if spec is None or not spec.submodule_search_locations:
        raise SculptError(f"{what} needs the PyPI package '{package}'; install it with: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise SculptError(f"{package} is installed but {path} is missing; reinstall it with: {install}")
    return path
