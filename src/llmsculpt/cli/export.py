"""`sculpt export`: GGUF for llama.cpp (uniform and heterogeneous), a vLLM directory (the family's own
config, or the Nemotron-NAS layout for per-layer shapes), or a plain HF directory.

A q8_0 GGUF quantises every matrix or is refused (one line naming the matrices whose row width is not a
multiple of 32); ``--allow-mixed`` keeps those f16 and warns instead."""

from __future__ import annotations

import argparse
import sys
import warnings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (or any --model accepted by prune)")
    p.add_argument("--format", required=True, choices=["gguf", "vllm", "hf"])
    p.add_argument("--out", required=True, help="output .gguf file or directory")
    p.add_argument("--dtype", default="f16", help="GGUF tensor type: f16, f32 or q8_0")
    p.add_argument("--allow-mixed", action="store_true",
                   help="q8_0: keep matrices whose row width is not a multiple of 32 in f16 (with a warning) "
                        "instead of refusing; re-pruning with --round-to 32 avoids them")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from llmsculpt.errors import SculptError
    from llmsculpt.io.save import check_output_file
    from llmsculpt.models.loading import load
    from llmsculpt.structures.shapes import architecture

    if args.format == "gguf":
        from llmsculpt.io.export_gguf import DTYPES, MixedQuantWarning, export_gguf, gguf_target

        if args.dtype not in DTYPES:  # before loading anything
            raise SculptError(f"unknown dtype {args.dtype!r}; choose one of: {', '.join(DTYPES)}")
        check_output_file(args.out, overwrite=args.overwrite)
        loaded = load(args.model, device="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MixedQuantWarning)
            path = export_gguf(loaded.model, loaded.tokenizer, args.out, dtype=args.dtype, overwrite=args.overwrite,
                               allow_mixed=args.allow_mixed)
        for w in caught:  # ours as one plain line; anything else as Python would have shown it
            if issubclass(w.category, MixedQuantWarning):
                print(f"sculpt export: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        target = gguf_target(architecture(loaded.model))
        kind = target.name + (" with per-layer head counts and FFN widths" if target.heterogeneous else "")
        print(f"wrote {path} (llama.cpp architecture {kind}, {args.dtype}); run it with llama.cpp / llama-cpp-python")
        return 0
    if args.format == "vllm":
        from llmsculpt.io.export_vllm import export_vllm, plan_layout
        from llmsculpt.io.save import check_output_dir

        check_output_dir(args.out, overwrite=args.overwrite)
        loaded = load(args.model, device="cpu", dtype="auto")  # written in the checkpoint's own dtype
        layout = plan_layout(loaded.model)  # refuses before writing
        export_vllm(loaded.model, loaded.tokenizer, args.out, overwrite=args.overwrite)
        if layout.route == "family":
            kind = f"the plain {loaded.model.config.model_type} config"
        else:
            kind = (f"the Nemotron-NAS layout (DeciLMForCausalLM, {layout.n_heads} query heads per layer, "
                    f"{layout.padded_heads} zero-padded)")
        print(f"wrote {args.out}: {kind}; serve it with vllm.LLM({args.out!r}, trust_remote_code=True)")
        return 0
    from llmsculpt.io.save import check_output_dir, save_pruned
    from llmsculpt.surgery.config import is_vanilla, sync_config

    check_output_dir(args.out, overwrite=args.overwrite)

    loaded = load(args.model, device="cpu")
    sync_config(loaded.model)
    if not is_vanilla(loaded.model.config):
        raise SculptError(
            "this model's layers differ (or its shapes/biases have no vanilla config), so a plain HF config cannot "
            "describe it. It loads with llmsculpt.load(dir), with transformers via "
            "AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True), and in llama.cpp via "
            "`sculpt export --format gguf` (deci architecture, llama/mistral families), and in vLLM via "
            "`sculpt export --format vllm`. A directory saved by llmsculpt already is the format the first two load"
        )
    save_pruned(loaded.model, loaded.tokenizer, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: a plain {loaded.model.config.model_type} config that loads in transformers/vLLM "
          "without remote code")
    return 0
