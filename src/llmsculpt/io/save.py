"""Save a (pruned) model so that it reloads exactly, atomically.

Uniform models get a vanilla config of the original ``model_type`` (plain transformers, vLLM...).
Heterogeneous ones get per-layer lists in config.json plus ``sculpt_modeling.py`` and an
``auto_map``, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works, while
``llmsculpt.load(dir)`` needs no remote code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from torch import nn

from llmsculpt.errors import SculptError
from llmsculpt.io.files import dumps_json, versions
from llmsculpt.models import sculpt_modeling
from llmsculpt.models.spec import SCULPT_PREFIX
from llmsculpt.plan import Plan
from llmsculpt.surgery.config import is_vanilla, sync_config

REMOTE_FILE = "sculpt_modeling.py"


def check_output_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``out`` cannot be written or would be clobbered.

    Writability is tested by really creating (and removing) a directory where ``out`` will be
    made: permission bits lie for root and on special or read-only file systems (/proc, /sys)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SculptError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SculptError(f"output directory {out} already exists; pass --overwrite to replace it")
    _probe_writable(out)
    return out


def check_output_file(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """The same early check for an output that is one file (a .gguf, a JSON report)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise SculptError(f"output path {out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise SculptError(f"output file {out} already exists; pass --overwrite to replace it")
    _probe_writable(out)
    return out


def check_writable(out: str | os.PathLike) -> Path:
    """Only the writability part (for outputs that are resumed in place, like a search study)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SculptError(f"output path {out} exists and is not a directory")
    _probe_writable(out if not out.exists() else out / "probe")
    return out


def _probe_writable(out: Path) -> None:
    probe = out.absolute().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise SculptError(f"output {out} cannot be created: {probe} is a file")
    try:
        Path(tempfile.mkdtemp(prefix=".sculpt-probe-", dir=probe)).rmdir()
    except OSError as exc:
        raise SculptError(f"output {out} cannot be written: cannot create anything in {probe} "
                          f"({exc.strerror or exc})") from None


@contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` in one rename.

    On any exception the temporary directory is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, overwrite=overwrite)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    try:
        yield tmp
        _usual_modes(tmp)
        if out.exists():
            backup = tmp.with_name(tmp.name + "-old")
            os.replace(out, backup)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; on success it replaces ``out`` in one rename.

    The one-file sibling of :func:`atomic_dir` (a .gguf, a recipe, a cached tensor): on any
    exception the temporary file is removed and ``out`` is left as it was. The caller checks
    overwriting (:func:`check_output_file`) when replacing ``out`` is not wanted."""
    out = Path(out).expanduser()
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.absolute().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            _usual_modes(tmp)
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _usual_modes(directory: Path) -> None:
    """mkdtemp makes the directory 0700 (and safetensors writes 0600 files): give the output the
    modes the user's umask asks for, so a server running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *(directory.rglob("*") if directory.is_dir() else ())]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_model_files(model: nn.Module, tokenizer, directory: Path, *, weights: bool = True) -> dict:
    """Write weights, config (vanilla or heterogeneous) and tokenizer into ``directory``; without
    ``weights`` the config alone (the layer-by-layer save writes the weights itself)."""
    arch = sync_config(model)
    vanilla = is_vanilla(model.config)
    original_config = model.config
    if not vanilla:  # save through our config class: the family's may refuse these shapes
        model.config = sculpt_modeling.SCULPT_CLASSES[arch.model_type][0].from_dict(original_config.to_dict())
    try:
        if weights:
            model.save_pretrained(directory, safe_serialization=True)
        else:
            model.config.save_pretrained(directory)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(directory)
    finally:
        model.config = original_config
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    cfg_path = directory / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if not vanilla:
        config_cls, model_cls = sculpt_modeling.SCULPT_CLASSES[arch.model_type]
        module = REMOTE_FILE[:-3]
        cfg["model_type"] = config_cls.model_type
        cfg["architectures"] = [model_cls.__name__]
        cfg["auto_map"] = {
            "AutoConfig": f"{module}.{config_cls.__name__}",
            "AutoModelForCausalLM": f"{module}.{model_cls.__name__}",
        }
        shutil.copyfile(sculpt_modeling.__file__, directory / REMOTE_FILE)
    elif cfg.get("model_type", "").startswith(SCULPT_PREFIX):  # a loaded per-layer model made uniform again
        family_model = sculpt_modeling.SCULPT_CLASSES[arch.model_type][1].__mro__[1]
        cfg["model_type"] = arch.model_type
        cfg["architectures"] = [family_model.__name__]
        cfg.pop("auto_map", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return {**arch.to_dict(), "plain_transformers": vanilla}


def save_pruned(
    model: nn.Module,
    tokenizer,
    out: str | os.PathLike,
    *,
    plan: Plan | None = None,
    report: dict | None = None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
    after=None,
    write=None,
) -> Path:
    """Atomically write model + tokenizer + ``plan.json`` + ``sculpt_report.json`` + a model card
    (``README.md``, io/model_card.py) to ``out``.

    ``after(tmp_dir)``, if given, may add files before the directory is moved into place;
    ``write(tmp_dir) -> architecture dict``, if given, writes the model instead of
    :func:`write_model_files` (the layer-by-layer save)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        arch = write(tmp) if write is not None else write_model_files(model, tokenizer, tmp)
        if plan is not None:
            plan.save(tmp / "plan.json")
        full_report = {"architecture": arch, **(report or {}), "versions": versions()}
        (tmp / "sculpt_report.json").write_text(dumps_json(full_report))
        from llmsculpt.io.model_card import model_card

        (tmp / "README.md").write_text(model_card(full_report, arch, name=Path(out).name))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if after is not None:  # e.g. plots: still inside the atomic directory
            after(tmp)
    return Path(out)
