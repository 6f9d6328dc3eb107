"""Reading users' files and writing our JSON: the one place for both.

Every command reads text, JSONL and YAML through these functions, so a bad file always gets the
same kind of one-line error naming the file and the line (bad UTF-8, bad JSON, bad YAML), and every
JSON we write is strict (no NaN/Infinity, string keys only) and says which versions wrote it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator

from llmsculpt.errors import SculptError


# ---- reading --------------------------------------------------------------------------------
def _decode(raw: bytes, path: Path, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SculptError(
            f"{path}:{line}: {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
            "give a UTF-8 text file"
        ) from None


def read_text(path: str | os.PathLike, *, what: str = "text file", allow_empty: bool = False) -> str:
    """The whole of a UTF-8 text file; a one-line SculptError naming file and line otherwise."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise SculptError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise SculptError(f"{what} {p} does not exist")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SculptError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    text = _decode(raw, p, what)
    if not allow_empty and not text.strip():
        raise SculptError(f"{what} {p} is empty")
    return text


def iter_jsonl(path: str | os.PathLike, *, what: str = "JSONL file", skip_bad: bool = False,
               bad: list | None = None, hint: str = "") -> Iterator[tuple[int, dict]]:
    """(line number, record) of every non-empty line; each record must be a JSON object.

    With ``skip_bad``, malformed lines are skipped and their numbers appended to ``bad``; ``hint``
    ends the error message about a malformed line (e.g. "; fix it or pass --skip-bad")."""
    p = Path(path).expanduser()
    for n, line in enumerate(read_text(p, what=what, allow_empty=True).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            if skip_bad:
                if bad is not None:
                    bad.append(n)
                continue
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise SculptError(f"{p}:{n}: not valid JSON ({reason}){hint}") from None
        yield n, rec


def read_json(path: str | os.PathLike, *, what: str = "JSON file"):
    """A whole JSON document; a one-line SculptError with file, line and column otherwise."""
    p = Path(path).expanduser()
    try:
        return json.loads(read_text(p, what=what))
    except json.JSONDecodeError as exc:
        raise SculptError(f"{p}:{exc.lineno}:{exc.colno}: {what} is not valid JSON ({exc.msg})") from None


def read_yaml(path: str | os.PathLike, *, what: str = "config") -> dict:
    """A YAML mapping; syntax errors are reported as ``file:line:column: problem`` on one line."""
    import yaml

    p = Path(path).expanduser()
    text = read_text(p, what=what, allow_empty=True)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SculptError(f"{where}: {what} is not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SculptError(f"{what} {p} must be a mapping of keys to values, got {type(data).__name__}")
    return data


# ---- writing --------------------------------------------------------------------------------
def jsonable(obj):
    """``obj`` made strict-JSON-safe: tuple/other keys as strings, NaN/Inf as None, tensors,
    numpy scalars and paths as plain values."""
    if isinstance(obj, dict):
        return {_key(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # torch / numpy tensors and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _key(key) -> str | int | float | bool | None:
    if isinstance(key, (str, int, bool)) or key is None:
        return key
    if isinstance(key, tuple):
        return ".".join(str(k) for k in key)
    return str(key)


def dumps_json(obj, *, indent: int | None = 1) -> str:
    """Strict JSON text (``allow_nan=False``) of ``obj`` after :func:`jsonable`."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def versions() -> dict[str, str]:
    """Versions of llmsculpt and the libraries that decide its results, for reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("llmsculpt", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[name] = "unknown"
    return out


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path, so that a missing one is reported as missing
    instead of being sent to a hub: it starts like a path (./ ../ / ~), or its first component is
    an existing local directory (``in/no_such_file``)."""
    if name.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in name):
        return True
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).expanduser().is_dir()
