"""The ``export`` verb: GGUF for llama.cpp (uniform and heterogeneous), a vLLM directory (the family's
own config, or the Nemotron-NAS layout for per-layer shapes), or a plain HF directory; the recipe is
written beside the output (``<out>.recipe.yaml`` next to a file, ``recipe.yaml`` inside a directory).

A q8_0 GGUF quantises every matrix or is refused (naming the matrices whose row width is not a
multiple of 32); ``allow_mixed`` keeps those f16 with a :class:`MixedQuantWarning` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmsculpt.api._common import RECIPE_FILE, is_main, recipe
from llmsculpt.config import ExportConfig
from llmsculpt.errors import SculptError


def export(model: str | os.PathLike | None = None, *, out: str | os.PathLike, config: ExportConfig | None = None,
           overwrite: bool = False, device: str | None = "cpu", **fields) -> str:
    """Write ``model`` in ``format`` to ``out``; returns one line saying what was written and how to run it.
    The model is loaded onto ``device`` ("cpu" by default: the tensors are written from host memory;
    "auto"/"cuda:N" load onto a GPU, e.g. when host memory is the scarcer of the two).

    Example:
        >>> export("out/m", format="gguf", dtype="q8_0", out="m.gguf")  # doctest: +SKIP
        'wrote m.gguf (llama.cpp architecture llama, q8_0); run it with llama.cpp / llama-cpp-python'
    """
    cfg = recipe(ExportConfig, config, model, fields)
    if cfg.model is None:
        raise SculptError("export needs a model (--model DIR)")
    write = {"gguf": _gguf, "vllm": _vllm, "hf": _hf}[cfg.format]
    return write(cfg, Path(out), overwrite, device)


def _gguf(cfg: ExportConfig, out: Path, overwrite: bool, device) -> str:
    from llmsculpt.io.export_gguf import export_gguf, gguf_target
    from llmsculpt.io.save import atomic_file, check_output_file
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import architecture

    check_output_file(out, overwrite=overwrite)
    loaded = load(cfg.model, device=device)
    target = gguf_target(architecture(loaded.model))
    if is_main():
        export_gguf(loaded.model, loaded.tokenizer, out, dtype=cfg.dtype, overwrite=overwrite,
                    allow_mixed=cfg.allow_mixed)
        with atomic_file(recipe_path(out)) as tmp:
            cfg.to_yaml(tmp)
        card = _card(cfg, loaded.model, out.name, {"format": "gguf", "target": target.name, "dtype": cfg.dtype,
                                                   "source": cfg.model})
        with atomic_file(card_path(out)) as tmp:
            Path(tmp).write_text(card)
    kind = target.name + (" with per-layer head counts and FFN widths" if target.heterogeneous else "")
    return f"wrote {out} (llama.cpp architecture {kind}, {cfg.dtype}); run it with llama.cpp / llama-cpp-python"


def recipe_path(out: str | os.PathLike) -> Path:
    """Where the recipe of a one-file export goes: ``m.gguf`` → ``m.gguf.recipe.yaml``."""
    out = Path(out)
    return out.with_name(out.name + "." + RECIPE_FILE)


def card_path(out: str | os.PathLike) -> Path:
    """Where the model card of a one-file export goes: ``m.gguf`` → ``m.gguf.README.md`` (a file's
    directory may hold other files, so the card is named after it)."""
    out = Path(out)
    return out.with_name(out.name + ".README.md")


def source_report(cfg: ExportConfig) -> dict:
    """The exported directory's ``sculpt_report.json`` (numbers, recipe), or just the model's name."""
    from llmsculpt.io.files import read_json

    path = Path(str(cfg.model)) / "sculpt_report.json"
    if not path.is_file():
        return {"config": {"model": cfg.model}}
    return {k: v for k, v in read_json(path, what="report").items() if k not in ("architecture", "versions")}


def _card(cfg: ExportConfig, model, name: str, export: dict, plain: bool = True) -> str:
    """The model card of an export: the source directory's report (numbers, recipe) if it has one,
    the exported model's per-layer shapes, and how to run this export."""
    from llmsculpt.io.model_card import model_card
    from llmsculpt.structures.shapes import architecture

    return model_card(source_report(cfg), {**architecture(model).to_dict(), "plain_transformers": plain}, name=name,
                      export=export)


def _vllm(cfg: ExportConfig, out: Path, overwrite: bool, device) -> str:
    from llmsculpt.io.export_vllm import export_vllm, plan_layout
    from llmsculpt.io.save import check_output_dir
    from llmsculpt.models.loading import load

    check_output_dir(out, overwrite=overwrite)
    loaded = load(cfg.model, device=device, dtype="auto")  # written in the checkpoint's own dtype
    layout = plan_layout(loaded.model)  # refuses before writing
    if is_main():
        card = _card(cfg, loaded.model, out.name, {"format": "vllm", "route": layout.route, "n_heads": layout.n_heads,
                                                   "padded_heads": layout.padded_heads},
                     plain=layout.route == "family")
        export_vllm(loaded.model, loaded.tokenizer, out, overwrite=overwrite,
                    extra_files={RECIPE_FILE: cfg.dumps_yaml(), "README.md": card})
    if layout.route == "family":
        kind = f"the plain {loaded.model.config.model_type} config"
    else:
        kind = (f"the Nemotron-NAS layout (DeciLMForCausalLM, {layout.n_heads} query heads per layer, "
                f"{layout.padded_heads} zero-padded)")
    return f"wrote {out}: {kind}; serve it with vllm.LLM({str(out)!r}, trust_remote_code=True)"


def _hf(cfg: ExportConfig, out: Path, overwrite: bool, device) -> str:
    from llmsculpt.io.save import check_output_dir, save_pruned
    from llmsculpt.models.loading import load
    from llmsculpt.surgery.config import is_vanilla, sync_config

    check_output_dir(out, overwrite=overwrite)
    loaded = load(cfg.model, device=device, dtype="auto")  # written in the checkpoint's own dtype
    sync_config(loaded.model)
    if not is_vanilla(loaded.model.config):
        raise SculptError(
            "this model's layers differ (or its shapes/biases have no vanilla config), so a plain HF config cannot "
            "describe it. It loads with llmsculpt.load(dir), with transformers via "
            "AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True), and in llama.cpp via "
            "`sculpt export --format gguf` (deci architecture, llama/mistral families), and in vLLM via "
            "`sculpt export --format vllm`. A directory saved by llmsculpt already is the format the first two load"
        )
    if is_main():
        save_pruned(loaded.model, loaded.tokenizer, out, overwrite=overwrite, report=source_report(cfg),
                    extra_files={RECIPE_FILE: cfg.dumps_yaml()})  # the source's report (and card numbers) carried
    return (f"wrote {out}: a plain {loaded.model.config.model_type} config that loads in transformers/vLLM "
            "without remote code")
