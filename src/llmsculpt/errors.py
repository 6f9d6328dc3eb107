"""User-facing errors: one clear sentence about what was wrong and what to do."""


class SculptError(Exception):
    """An error caused by the user's input (bad path, bad ratio, unsupported model...).

    The CLI prints ``str(err)`` on one line and exits with status 2; no traceback.
    """


class MissingExtraError(SculptError):
    """An optional dependency is needed for the requested feature."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the optional package '{package}'. "
            f"Install it with: pip install 'llmsculpt[{extra}]'"
        )


def require(module: str, *, extra: str, feature: str):
    """Import an optional module lazily, or raise a MissingExtraError that says how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], extra, feature) from exc
