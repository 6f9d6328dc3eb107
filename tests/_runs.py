"""The small runs shared by the single- and multi-process tests, and an in-process CLI runner."""

import contextlib
import io

import torch

from llmsculpt.config import AccelConfig, PretrainPruneConfig
from llmsculpt.testing import tiny_model, tiny_tokenizer
from llmsculpt.train.data import Example, load_examples

TEXT = "Pruning removes heads and channels; training recovers what was lost. " * 30


def accel_case(data_path, **overrides):
    """model, tokenizer, examples, config: 2 phases, 4-example batches, checkpoints every 3 steps."""
    tok = tiny_tokenizer()
    data_path.write_text(TEXT)
    examples, _ = load_examples(data_path, tok, fmt="text", seq_len=32)
    cfg = AccelConfig(target_params=100_000, phases=2, batch_size=4, lr=1e-3, min_lr=1e-4, checkpoint_every=3,
                      calib_samples=4, calib_len=32, prune_steps=1, **overrides)
    return tiny_model("tiny-llama"), tok, examples, cfg


def token_blocks(n: int = 24, seq: int = 32) -> list[Example]:
    g = torch.Generator().manual_seed(1)
    return [Example(t.tolist(), t.tolist()) for t in torch.randint(4, 128, (n, seq), generator=g)]


def pretrain_case(**overrides):
    """model, tokenizer, examples, config: 2 pruning steps per training step, OBS update."""
    kw = dict(target_params=105_000, cycle="2:1", quantum=0.04, continue_steps=2, obs=True) | overrides
    return tiny_model("tiny-llama"), tiny_tokenizer(), token_blocks(), PretrainPruneConfig(**kw)


def cli(*argv) -> tuple[int, str, str]:
    """Run ``sculpt`` in-process: (exit status, stdout, stderr without progress-bar lines)."""
    from llmsculpt.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    lines = [ln for ln in err.getvalue().replace("\r", "\n").splitlines() if ln.strip() and not _is_progress(ln)]
    return rc, out.getvalue(), "\n".join(lines)


def _is_progress(line: str) -> bool:
    return any(mark in line for mark in ("it/s]", "s/it]", "step/s]", "Loading weights", "%|"))
