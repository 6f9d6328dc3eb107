"""Recipes of the commands that read a model and write no new weights decision: eval and export."""

from __future__ import annotations

from dataclasses import dataclass

from llmsculpt.config.base import Recipe
from llmsculpt.errors import SculptError

EXPORT_FORMATS = ("gguf", "vllm", "hf")
GGUF_DTYPES = ("f32", "f16", "q8_0")  # checked against io/export_gguf.DTYPES in tests/test_recipes.py


@dataclass
class ExportConfig(Recipe):
    """``sculpt export``: GGUF (llama.cpp), a vLLM directory, or a plain HF directory.

    Example:
        >>> ExportConfig(model="out/m", format="gguf", dtype="q8_0").allow_mixed
        False
    """

    KIND = "export"

    model: str | None = None
    format: str = "gguf"  # gguf | vllm | hf
    dtype: str = "f16"  # GGUF tensor type: f16, f32 or q8_0 (the other formats keep the checkpoint's)
    allow_mixed: bool = False  # q8_0: keep matrices whose rows are not a multiple of 32 in f16

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise SculptError(f"unknown export format {self.format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
        if self.format == "gguf" and self.dtype not in GGUF_DTYPES:
            raise SculptError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(GGUF_DTYPES)}")


@dataclass
class EvalConfig(Recipe):
    """``sculpt eval``: perplexity on a text, a sample generation, multiple-choice and lm-eval tasks.

    Example:
        >>> EvalConfig(model="out/m", text_file="heldout.txt", seq_len=256).batch_size
        8
    """

    KIND = "eval"

    model: str | None = None
    text_file: str | None = None  # text file for perplexity (CLI --text)
    seq_len: int = 128
    batch_size: int = 8
    max_windows: int | None = None
    generate: str | None = None  # also greedy-generate from this prompt
    max_new_tokens: int = 32
    tasks: str | None = None  # lm-eval tasks, comma-separated
    include_path: str | None = None  # directory of local lm-eval task YAMLs
    mc_file: tuple[str, ...] = ()  # local multiple-choice tasks (JSONL or BIG-bench JSON)
    num_fewshot: int = 0
    limit: int | None = None
    dtype: str = "auto"

    def __post_init__(self):
        if isinstance(self.mc_file, str):
            self.mc_file = (self.mc_file,)
        self.mc_file = tuple(self.mc_file)
        if self.num_fewshot < 0:
            raise SculptError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit < 1:
            raise SculptError(f"--limit must be positive, got {self.limit}")
        if self.seq_len < 2 or self.batch_size < 1:
            raise SculptError("seq_len must be >= 2 and batch_size >= 1")

    def task_names(self) -> list[str]:
        names = [t.strip() for t in (self.tasks or "").split(",") if t.strip()]
        if self.tasks is not None and not names:
            raise SculptError("--tasks is empty; give lm-eval task names like arc_easy,piqa")
        return names

    @property
    def wants_tasks(self) -> bool:
        return bool(self.tasks or self.mc_file)
