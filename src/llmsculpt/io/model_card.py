"""A Hugging Face model card (``README.md``) for every saved output directory.

YAML front matter (``base_model``, ``library_name``, ``tags``, ``license`` where the source is known),
then the recipe, parameter counts, the per-layer shape table, perplexity before/after and the exact
commands that load the directory in transformers, vLLM and llama.cpp. Built only from the report and
architecture that ``save_pruned`` writes anyway, so the card never disagrees with the files.
"""

from __future__ import annotations

import json

from llmsculpt.models.loading import DEFAULT_MODEL

# built-in names -> (hub id, license) of what they are
KNOWN_SOURCES = {
    DEFAULT_MODEL: ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}


def _source(report: dict) -> tuple[str | None, str | None]:
    name = (report.get("config") or {}).get("model") or report.get("source")
    if name in KNOWN_SOURCES:
        return KNOWN_SOURCES[name]
    if isinstance(name, str) and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name, None  # a hub id; its license is not known here
    return None, None


def _front_matter(report: dict, arch: dict, *, gguf: bool = False) -> str:
    base, license_ = _source(report)
    lines = ["---"]
    if base:
        lines.append(f"base_model: {base}")
    if license_:
        lines.append(f"license: {license_}")
    lines += [f"library_name: {'gguf' if gguf else 'transformers'}", "pipeline_tag: text-generation", "tags:",
              "- llmsculpt", "- pruned", "- structured-pruning", f"- {arch.get('model_type', 'llama')}"]
    if gguf:
        lines.append("- gguf")
    if report.get("method"):
        lines.append(f"- {report['method']}")
    lines.append("---")
    return "\n".join(lines)


def _layer_table(arch: dict) -> list[str]:
    rows = ["| layer | query heads | K/V heads | MLP width |", "|---|---|---|---|"]
    for i, ls in enumerate(arch.get("layers", [])):
        rows.append(f"| {i} | {ls['n_heads']} | {ls['n_kv']} | {ls['mlp']} |")
    return rows


def _numbers(report: dict) -> list[str]:
    out = []
    if "params_before" in report and "params_after" in report:
        out.append(f"- parameters: {report['params_before']:,} -> {report['params_after']:,} "
                   f"({report.get('achieved_ratio', 0):.1%} removed)")
    if report.get("ppl_before") is not None:
        out.append(f"- perplexity (held-out text, before -> after): {report['ppl_before']:.2f} -> "
                   f"{report['ppl_after']:.2f}")
    return out or ["- (no counts recorded)"]


def _llamacpp(arch: dict, name: str) -> str:
    layers = arch.get("layers", [])
    uniform = all(ls == layers[0] for ls in layers)
    if arch.get("model_type") in ("qwen2", "qwen3") and not uniform:
        return ("llama.cpp: not available -- its only per-layer architecture (deci) has no "
                f"{arch['model_type']} q/k/v biases or q/k norms; prune with uniform shapes for a GGUF.")
    return (f"llama.cpp:\n```bash\nsculpt export --format gguf --model {name} --out {name}.gguf\n"
            f"llama-cli -m {name}.gguf -p \"Hello\"\n```")


def _load_sections(arch: dict, name: str, plain: bool) -> list[str]:
    """How to load a saved llmsculpt directory (or a family-layout vLLM export)."""
    remote = "" if plain else ", trust_remote_code=True"
    vllm = (f"vllm serve {name}" if plain else
            f"sculpt export --format vllm --model {name} --out {name}-vllm\nvllm serve {name}-vllm --trust-remote-code")
    return [
        "transformers:",
        f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{name}\"{remote})\n"
        f"tok = AutoTokenizer.from_pretrained(\"{name}\")\n```",
        "llmsculpt: `llmsculpt.load(\"" + name + "\")`",
        f"vLLM:\n```bash\n{vllm}\n```",
        _llamacpp(arch, name),
    ]


def _nas_sections(arch: dict, name: str, export: dict) -> list[str]:
    """How to load a Nemotron-NAS (per-layer) vLLM export."""
    return [
        f"This directory is in NVIDIA's Nemotron-NAS (DeciLM) layout, which vLLM serves with per-layer shapes: "
        f"every layer has {export.get('n_heads')} query heads ({export.get('padded_heads', 0)} of them zero padding, "
        "which changes no output), its own K/V heads and MLP width. `configuration_decilm.py` and "
        "`modeling_decilm.py` ship beside the weights.",
        f"vLLM:\n```bash\nvllm serve {name} --trust-remote-code\n```",
        "transformers:",
        f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{name}\", trust_remote_code=True)\n"
        f"tok = AutoTokenizer.from_pretrained(\"{name}\")\n```",
        "llmsculpt (the pruned model itself, padding removed): `llmsculpt.load(\"" + name + "\")`",
        _llamacpp(arch, name),
    ]


def _gguf_sections(arch: dict, name: str, export: dict) -> list[str]:
    """How to run a GGUF export."""
    target = export.get("target", "llama")
    out = [f"A GGUF file for llama.cpp (architecture `{target}`, tensors {export.get('dtype', 'f16')}).",
           f"llama.cpp:\n```bash\nllama-cli -m {name} -p \"Hello\"\nllama-server -m {name}\n```",
           f"llama-cpp-python: `llama_cpp.Llama(model_path=\"{name}\")`"]
    if target == "deci":
        out.append("transformers and vLLM do not read per-layer (`deci`) GGUF files: use the source directory "
                   f"({export.get('source', 'DIR')}), or `sculpt export --format vllm` from it.")
    else:
        out.append(f"transformers / llmsculpt (dequantised): `llmsculpt.load(\"{name}\")`")
    return out


def model_card(report: dict, arch: dict, *, name: str = "DIR", export: dict | None = None) -> str:
    """The README.md text for an output (``name`` is used in the load commands). ``export`` describes an
    export instead of a saved directory: ``{"format": "vllm", "route": "family" | "nemotron-nas",
    "n_heads", "padded_heads"}`` or ``{"format": "gguf", "target", "dtype", "source"}``."""
    plain = arch.get("plain_transformers", True)
    recipe = json.dumps(report.get("config") or {"method": report.get("method")}, indent=2, sort_keys=True)
    fmt = (export or {}).get("format")
    if fmt == "gguf":
        load = _gguf_sections(arch, name, export)
    elif fmt == "vllm" and export.get("route") == "nemotron-nas":
        load = _nas_sections(arch, name, export)
    else:
        load = _load_sections(arch, name, plain)
    sections = [
        _front_matter(report, arch, gguf=fmt == "gguf"),
        f"# {name}",
        "Structurally pruned with [llmsculpt](https://pypi.org/project/llmsculpt/): whole attention heads, "
        "K/V groups and MLP channels removed, weights kept as they were otherwise."
        + ("" if plain or fmt else " Layers differ in shape, so this directory ships its own modeling file."),
        "## Numbers", "\n".join(_numbers(report)),
        "## Recipe", f"```json\n{recipe}\n```",
        "## Per-layer shapes", "\n".join(_layer_table(arch)),
        "## Load it", *load,
    ]
    return "\n\n".join(sections) + "\n"
