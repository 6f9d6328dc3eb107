"""Entry point of the ``sculpt`` command. Each command lives in its own module under ``cli/``
and exposes ``add_arguments(parser)`` and ``run(args) -> int``; they are listed here explicitly."""

from __future__ import annotations

import argparse
import importlib
import sys

from llmsculpt.errors import SculptError
from llmsculpt.process_memory import tune_process_memory

# command name -> (module, one-line help). Modules are imported lazily, so `sculpt eval` does not
# pay for optuna, and a missing optional extra only affects its own command.
COMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("llmsculpt.cli.prune", "prune a model to a target size and save it"),
    "eval": ("llmsculpt.cli.evaluate", "perplexity (and more) of a model on a text"),
    "inspect": ("llmsculpt.cli.inspect", "per-layer table of a saved model"),
    "accel": ("llmsculpt.cli.accel", "Adapt-Accel: interleave pruning with recovery training"),
    "pretrain-prune": ("llmsculpt.cli.pretrain_prune", "EfficientLLM: pruning-aware training to a parameter budget"),
    "finetune": ("llmsculpt.cli.finetune", "recovery fine-tuning (LoRA or full) of a pruned model"),
    "search": ("llmsculpt.cli.search", "AdaPruner: Bayesian search over calibration samples and importance"),
    "export": ("llmsculpt.cli.export", "export to GGUF (llama.cpp), a vLLM directory or a plain HF directory"),
    "bench-speed": ("llmsculpt.cli.bench_speed", "prefill/decode speed, memory and FLOPs vs a baseline"),
    "estimate": ("llmsculpt.cli.estimate", "predicted peak memory of a prune, from config.json alone"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the whole usage block is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sculpt", description="Structured pruning of causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=OneLineParser)
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    tune_process_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except SculptError as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"sculpt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sculpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
