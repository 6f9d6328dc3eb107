"""Every output feeds every command: a matrix of producers x consumers on the tiny models.

Producers make a model the way users do (a dense HF directory, a GGUF file, each kind of prune,
fine-tuning, Adapt-Accel, pruning-aware training, a replayed search recipe). Consumers are every
command that takes a model. Each cell either works — and its output reloads with finite logits — or
is a deliberate refusal: exit 2, exactly one stderr line, nothing at ``--out``. Which cells refuse is
decided from the producer's architecture (``expected_refusal``), so an unexpected refusal fails.

The default run covers every producer and consumer with the producers spread over the four families;
``-m slow`` runs every family for every producer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from _runs import cli

from llmsculpt.models.loading import load
from llmsculpt.structures.shapes import architecture

FAMILIES = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"]
TEXT = ("The quick brown fox jumps over the lazy dog. Pruning removes whole heads and channels from a "
        "model, and the model that remains is smaller and faster. ") * 40
FAST = ["--n-samples", "2", "--seq-len", "16"]


class Workspace:
    """Session-wide inputs and the producers' outputs, each made once."""

    def __init__(self, root: Path):
        self.root = root
        self.text = root / "text.txt"
        self.text.write_text(TEXT)
        self.train = root / "train.txt"  # a few dozen blocks: training commands stay quick
        self.train.write_text(TEXT[:1200])
        self.alpaca = root / "alpaca.jsonl"
        self.alpaca.write_text("".join(
            json.dumps({"instruction": f"Say {w}.", "output": f"{w} {w}."}) + "\n"
            for w in ("fox", "dog", "heads", "channels", "model", "faster", "prune", "train")))
        self._made: dict[tuple[str, str], Path] = {}

    def dense(self, family: str) -> Path:
        """A plain HF directory with a BPE tokenizer (so GGUF export is possible)."""
        out = self.root / f"dense-{family}"
        if not out.exists():
            from llmsculpt.testing import tiny_bpe_tokenizer, tiny_model

            tok = tiny_bpe_tokenizer()
            model = tiny_model(family, vocab_size=len(tok), max_position_embeddings=256)
            model.save_pretrained(out)
            tok.save_pretrained(out)
        return out

    def produce(self, producer: str, family: str) -> Path:
        key = (producer, family)
        if key not in self._made:
            self._made[key] = PRODUCERS[producer](self, family, self.root / f"{producer}-{family}")
        return self._made[key]


def _ok(rc_out_err, what: str):
    rc, _, err = rc_out_err
    assert rc == 0, f"{what}: {err}"


def _prune(ws, family, out, *extra, model=None):
    _ok(cli("prune", "--model", model or ws.dense(family), "--calib", ws.text, *FAST, "--no-eval",
            "--no-plots", "--out", out, *extra), f"producer prune {extra}")
    return out


def _gguf(ws, family, out):
    out = out.with_suffix(".gguf")
    _ok(cli("export", "--model", ws.dense(family), "--format", "gguf", "--dtype", "f32", "--out", out), "gguf")
    return out


def _params(path) -> int:
    return architecture(load(path, device="cpu").model).param_count()


def _finetune(ws, family, out):
    src = ws.produce("per-layer", family)
    _ok(cli("finetune", "--model", src, "--data", ws.alpaca, "--epochs", "1", "--batch-size", "4",
            "--seq-len", "48", "--out", out), "finetune")
    return out


def _accel(ws, family, out):
    src = ws.dense(family)
    _ok(cli("accel", "--model", src, "--data", ws.train, "--format", "text", "--ratio", "0.1", "--phases", "1",
            "--seq-len", "16", "--batch-size", "4", "--prune-steps", "1", "--out", out), "accel")
    return out


def _pretrain(ws, family, out):
    src = ws.dense(family)
    target = int(_params(src) * 0.92)
    _ok(cli("pretrain-prune", "--model", src, "--data", ws.train, "--target-params", target, "--seq-len", "16",
            "--batch-size", "4", "--quantum", "0.04", "--continue-steps", "1", "--out", out), "pretrain-prune")
    return out


def _search_replay(ws, family, out):
    study = out.with_name(out.name + "-study")
    _ok(cli("search", "--model", ws.dense(family), "--ratio", "0.1", "--trials", "2", "--n-samples", "2",
            "--pool-size", "3", "--seq-len", "16", "--calib", ws.text, "--eval-text", ws.text,
            "--eval-windows", "2", "--study", study), "search")
    return _prune(ws, family, out, "--config", study / "best.yaml")


PRODUCERS = {
    "dense": lambda ws, family, out: ws.dense(family),
    "gguf": _gguf,
    "uniform": lambda ws, family, out: _prune(ws, family, out, "--method", "uniform", "--ratio", "0.15"),
    "per-layer": lambda ws, family, out: _prune(
        ws, family, out, "--method", "adaptive", "--attn-unit", "head", "--ratio", "0.15",
        "--option", "amplitude=0.3", "--option", "steps=2"),
    "flap": lambda ws, family, out: _prune(ws, family, out, "--method", "flap", "--ratio", "0.2"),
    "shortgpt": lambda ws, family, out: _prune(ws, family, out, "--method", "shortgpt", "--ratio", "0.2"),
    "finetune-lora": _finetune,
    "accel": _accel,
    "pretrain-prune": _pretrain,
    "search-replay": _search_replay,
}


def _consumer_argv(consumer: str, model: Path, ws: Workspace, out: Path) -> list:
    common = {
        "prune": ["prune", "--model", model, "--method", "uniform", "--ratio", "0.1", "--calib", ws.text, *FAST,
                  "--no-eval", "--no-plots", "--out", out],
        "prune-adaptive": ["prune", "--model", model, "--ratio", "0.1", "--calib", ws.text, *FAST, "--no-eval",
                           "--no-plots", "--option", "steps=2", "--out", out],
        "eval": ["eval", "--model", model, "--text", ws.text, "--seq-len", "16", "--max-windows", "4", "--json"],
        "inspect": ["inspect", model, "--json"],
        "bench-speed": ["bench-speed", "--model", model, "--batch-sizes", "1", "--prompt-len", "8",
                        "--new-tokens", "2", "--repeats", "1", "--json"],
        "finetune-lora": ["finetune", "--model", model, "--data", ws.alpaca, "--epochs", "1", "--batch-size", "8",
                          "--seq-len", "48", "--out", out],
        "finetune-full": ["finetune", "--model", model, "--data", ws.alpaca, "--mode", "full", "--epochs", "1",
                          "--batch-size", "8", "--seq-len", "48", "--out", out],
        "accel": ["accel", "--model", model, "--data", ws.train, "--ratio", "0.05", "--phases", "1", "--seq-len",
                  "16", "--batch-size", "4", "--prune-steps", "1", "--out", out],
        "search": ["search", "--model", model, "--ratio", "0.05", "--trials", "1", "--n-samples", "2",
                   "--pool-size", "2", "--seq-len", "16", "--calib", ws.text, "--eval-text", ws.text,
                   "--eval-windows", "2", "--study", out],
        "pretrain-prune": ["pretrain-prune", "--model", model, "--data", ws.train, "--target-params",
                           int(_params(model) * 0.95), "--seq-len", "16", "--batch-size", "4", "--quantum", "0.04",
                           "--continue-steps", "0", "--out", out],
        "export-hf": ["export", "--model", model, "--format", "hf", "--out", out],
    }
    for dtype in ("f32", "f16", "q8_0"):
        common[f"export-gguf-{dtype}"] = ["export", "--model", model, "--format", "gguf", "--dtype", dtype,
                                          "--out", out.with_suffix(".gguf")]
    return common[consumer]


CONSUMERS = ["prune", "prune-adaptive", "eval", "inspect", "bench-speed", "finetune-lora", "finetune-full",
             "accel", "search", "pretrain-prune", "export-hf", "export-gguf-f32", "export-gguf-f16",
             "export-gguf-q8_0"]
WRITES_MODEL = {"prune", "prune-adaptive", "finetune-lora", "finetune-full", "accel", "pretrain-prune", "export-hf"}


def expected_refusal(model: Path, consumer: str) -> str | None:
    """The message fragment of a deliberate refusal for this input and command, or None."""
    if not consumer.startswith("export"):
        return None
    arch = architecture(load(model, device="cpu").model)
    odd_bias = arch.o_bias != (arch.qkv_bias and arch.model_type != "qwen2") or arch.down_bias != arch.mlp_bias
    if consumer == "export-hf" and (not arch.is_uniform or odd_bias):
        return "plain HF config cannot describe it"
    if consumer.startswith("export-gguf"):
        if not arch.is_uniform and arch.model_type in ("qwen2", "qwen3"):
            return "llama.cpp's only architecture"
        if odd_bias:
            return "bias"
        if consumer.endswith("q8_0") and any(ls.mlp % 32 or (ls.n_heads * arch.head_dim) % 32 for ls in arch.layers):
            return "--round-to 32"
    return None


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("chains"))


def _check_cell(ws: Workspace, producer: str, family: str, consumer: str, tmp_path: Path) -> None:
    model = ws.produce(producer, family)
    out = tmp_path / "out"
    refusal = expected_refusal(model, consumer)
    rc, stdout, err = cli(*_consumer_argv(consumer, model, ws, out))
    target = out.with_suffix(".gguf") if consumer.startswith("export-gguf") else out
    if os.environ.get("SCULPT_CHAIN_LOG"):  # for the closing note: which cells ran, which refused
        with open(os.environ["SCULPT_CHAIN_LOG"], "a") as log:
            log.write(f"{producer}\t{family}\t{consumer}\t{'refused: ' + refusal if refusal else 'runs'}\n")
    if refusal:
        assert rc == 2, f"expected a refusal ({refusal}), got rc {rc}: {err}"
        assert len(err.splitlines()) == 1 and refusal in err, err
        assert not target.exists()
        return
    assert rc == 0, err
    if consumer in ("eval", "inspect", "bench-speed"):
        result = json.loads(stdout)
        assert result, stdout
        if consumer == "eval":
            assert torch.isfinite(torch.tensor(result["ppl"])) and result["ppl"] > 1
        return
    if consumer == "search":
        assert (target / "best.yaml").is_file() and (target / "recipe.yaml").is_file()
        return
    assert target.exists()
    if consumer.startswith("export-gguf"):
        import gguf

        assert len(gguf.GGUFReader(target).tensors) > 0
        assert target.with_name(target.name + ".recipe.yaml").is_file()  # the effective recipe beside the file
        return
    assert (target / "recipe.yaml").is_file()  # every written model carries the recipe that replays it
    reloaded = load(target, device="cpu")
    with torch.no_grad():
        logits = reloaded.model(torch.randint(4, 100, (1, 12))).logits
    assert torch.isfinite(logits).all()
    if consumer in WRITES_MODEL - {"export-hf"}:
        report = json.loads((target / "sculpt_report.json").read_text())
        assert report["versions"]["torch"] == torch.__version__ and report["versions"]["llmsculpt"]


# the default run: every producer once, families in rotation; every consumer on each
SPREAD = [(p, FAMILIES[i % len(FAMILIES)]) for i, p in enumerate(PRODUCERS)]


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("producer,family", SPREAD, ids=[f"{p}-{f}" for p, f in SPREAD])
def test_chain(ws, producer, family, consumer, tmp_path):
    _check_cell(ws, producer, family, consumer, tmp_path)


FULL = [(p, f) for p in PRODUCERS for f in FAMILIES if (p, f) not in SPREAD]


@pytest.mark.slow
@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("producer,family", FULL, ids=[f"{p}-{f}" for p, f in FULL])
def test_chain_every_family(ws, producer, family, consumer, tmp_path):
    _check_cell(ws, producer, family, consumer, tmp_path)
