"""The recipe base class and the small parsers every recipe shares.

A recipe is a dataclass holding everything one command decides with. :class:`Recipe` gives each
one the same YAML round trip, the same refusal of unknown keys (named, with the known ones
listed, nested keys as ``data.foo``) and the same way of laying command-line flags over a file
(:meth:`Recipe.with_overrides`: a flag left at None keeps the file's value).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, TypeVar

from llmsculpt.errors import SculptError

R = TypeVar("R", bound="Recipe")


def parse_count(value: str | int | float | None) -> int | None:
    """'90M' -> 90_000_000, '1.5B' -> 1_500_000_000, '1200000' -> 1200000."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = str(value).strip().upper().replace("_", "").replace(",", "")
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if mult > 1 else text) * mult)
    except ValueError:
        raise SculptError(f"cannot read parameter count {value!r}; write e.g. 90M, 1.2B or 90000000") from None


def parse_layers(value: str | list | None, n_layers: int | None = None) -> tuple[int, ...] | None:
    """'4-29' (inclusive), '0,3,5', 'all' or None -> layer indices."""
    if value is None or value == "all":
        return None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    out: list[int] = []
    try:
        for part in str(value).split(","):
            if "-" in part:
                a, b = part.split("-")
                out += range(int(a), int(b) + 1)
            else:
                out.append(int(part))
    except ValueError:
        raise SculptError(f"cannot read layer range {value!r}; write e.g. 4-29 or 0,1,2") from None
    return tuple(out)


def parse_bytes(text: str | int) -> int:
    """'48GB', '48G', '24GiB', '500MB' or a plain number of bytes."""
    import re

    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise SculptError(f"cannot read a memory size from {text!r}; write e.g. 48GB or 24GiB")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    if m.group(3).startswith("i"):
        scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def check_budget(value: str | int | None) -> str | int | None:
    """A memory budget ("24GB") as given, once it reads as one (None: no budget)."""
    if value not in (None, ""):
        parse_bytes(value)
    return value


def check_round_to(value) -> int:
    """``round_to`` as given, if it is a positive integer (1: no rounding); else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SculptError(
            f"round_to must be a positive integer (1: no rounding; 32 suits llama.cpp's quantisation), got {value!r}"
        )
    return value


SERVE_MODES = ("any", "uniform", "vllm", "llamacpp")  # --serve: the runtime the plan must run in exactly
SERVE_ROUND_TO = {"llamacpp": 32}  # --round-to when not given: q8_0 quantises rows in blocks of 32


def check_serve(value) -> str:
    """``serve`` as given, if it names a runtime (allocation/serving.py); else a one-line error."""
    if value not in SERVE_MODES:
        raise SculptError(f"serve must be one of {', '.join(SERVE_MODES)}, got {value!r}")
    return value


def round_to_for(round_to: int | None, serve: str = "any") -> int:
    """``round_to`` as given, or the default of the ``serve`` runtime when it is None (llamacpp: 32, else 1)."""
    return check_round_to(round_to) if round_to is not None else SERVE_ROUND_TO.get(serve, 1)


def check_ratio(ratio: float | None, target_params: int | None, *, default: float | None = None) -> float | None:
    """The one meaning of ``ratio`` in every recipe: the fraction of parameters removed, in [0, 1),
    given instead of ``target_params`` (never both). Returns the ratio, ``default`` if neither is set."""
    if ratio is not None and target_params is not None:
        raise SculptError("give either ratio or target_params, not both")
    if ratio is None and target_params is None:
        if default is None:
            raise SculptError("give ratio (fraction of parameters to remove) or target_params (e.g. 90M)")
        ratio = default
    if ratio is not None and not 0.0 <= float(ratio) < 1.0:
        raise SculptError(f"ratio must be in [0, 1), got {ratio}")
    if target_params is not None and target_params <= 0:
        raise SculptError(f"target_params must be positive, got {target_params}")
    return ratio


@dataclass
class Recipe:
    """Base of every command's recipe: YAML in/out, unknown keys refused by name, CLI overrides."""

    KIND: ClassVar[str] = "recipe"  # the command, for messages and the optional top-level key
    # pairs of fields of which setting one (by an override) clears the other
    EXCLUSIVE: ClassVar[tuple[tuple[str, str], ...]] = ()

    # ---- dicts ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[R], data: dict, *, _prefix: str = "", _kind: str | None = None) -> R:
        """Build from a mapping; an unknown key (``data.foo`` when nested) is a one-line error."""
        kind = _kind or cls.KIND
        if not isinstance(data, dict):
            where = f" under {_prefix[:-1]}" if _prefix else ""
            raise SculptError(f"{kind} recipe{where} must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls) if f.init}
        unknown = [k for k in data if k not in known]
        if unknown:
            names = ", ".join(f"'{_prefix}{k}'" for k in unknown)
            where = f" (under {_prefix[:-1]})" if _prefix else ""
            raise SculptError(f"unknown key{'s' if len(unknown) > 1 else ''} {names} in {kind} recipe; "
                              f"known{where}: {', '.join(known)}")
        kw = {}
        for name, value in data.items():
            nested = _nested_class(cls, name)
            if nested is not None and isinstance(value, dict):
                value = nested.from_dict(value, _prefix=f"{_prefix}{name}.", _kind=kind)
            elif isinstance(value, list) and "tuple" in str(known[name].type):
                value = tuple(value)
            kw[name] = _check_type(kind, f"{_prefix}{name}", str(known[name].type), value)
        try:
            return cls(**kw)
        except TypeError as exc:  # a required field missing
            raise SculptError(f"{kind} recipe: {exc}") from None

    def to_dict(self) -> dict:
        """Plain data (tuples as lists) that :meth:`from_dict` reads back to an equal recipe."""
        return _plain(dataclasses.asdict(self))

    # ---- YAML ----------------------------------------------------------------------------
    def dumps_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_yaml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.dumps_yaml())

    @classmethod
    def from_yaml(cls: type[R], path: str | os.PathLike) -> R:
        """Read a recipe file; ``{<command>: {...}}`` (e.g. ``prune:``) is accepted as well."""
        from llmsculpt.io.files import read_yaml

        data = read_yaml(path, what="config")
        if len(data) == 1 and isinstance(data.get(cls.KIND), dict):
            data = data[cls.KIND]
        return cls.from_dict(data)

    # ---- overrides -------------------------------------------------------------------------
    @classmethod
    def from_flags(cls: type[R], **flags) -> R:
        """A recipe from keywords alone (the defaults for the rest); None means "not given", and a
        keyword may name a nested field (``seq_len`` → ``data.seq_len``)."""
        return cls.from_dict(_lay(cls, {}, {k: v for k, v in flags.items() if v is not None}))

    def with_overrides(self: R, **flags) -> R:
        """A copy with the non-None ``flags`` set (command-line flags over a recipe file).

        A flag may name a field of a nested recipe (``seq_len`` → ``data.seq_len``); setting one of
        an exclusive pair (``ratio``/``target_params``) clears the other. Validation runs again."""
        given = {k: v for k, v in flags.items() if v is not None}
        data = _lay(type(self), self.to_dict(), given)
        for a, b in self.EXCLUSIVE:
            if a in given and b not in given:
                data[b] = None
            elif b in given and a not in given:
                data[a] = None
        return type(self).from_dict(data)


def _lay(cls: type, data: dict, given: dict) -> dict:
    """``given`` written into ``data`` (a recipe as a dict), nested fields into their sub-dict."""
    own = {f.name for f in fields(cls) if f.init}
    for key, value in given.items():
        if key in own:
            data[key] = _plain(value)
            continue
        for name in own:
            nested = _nested_class(cls, name)
            if nested is not None and key in {f.name for f in fields(nested)}:
                sub = data.get(name)
                data[name] = {**(sub if isinstance(sub, dict) else {}), key: _plain(value)}
                break
        else:
            raise SculptError(f"unknown option {key!r} for the {cls.KIND} recipe")
    return data


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_type(kind: str, key: str, annotation: str, value):
    """``value`` if a plainly typed field (``int``, ``float``, ``bool``, ``str``, optionally ``| None``)
    holds that type; YAML's ``2e-5`` (read as a string) is taken as the float it means."""
    names = [t.strip() for t in annotation.split("|")]
    optional = "None" in names
    names = [t for t in names if t != "None"]
    if len(names) != 1 or names[0] not in _SCALARS or (value is None and optional):
        return value
    if names[0] == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, _SCALARS[names[0]]) and (names[0] == "bool" or not isinstance(value, bool))
    if not ok:
        raise SculptError(f"{key} in {kind} recipe must be {'a' if names[0] != 'int' else 'an'} {names[0]}, "
                          f"got {value!r}")
    return value


def _nested_class(cls: type, name: str) -> type[Recipe] | None:
    """The Recipe class of field ``name`` if that field holds a nested recipe (its default does)."""
    for f in fields(cls):
        if f.name == name and f.default_factory is not dataclasses.MISSING:
            made = f.default_factory()
            return type(made) if isinstance(made, Recipe) else None
    return None


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
