"""Bad input, for every command: exit status 2, exactly one stderr line (progress bars aside), no
traceback, nothing written at ``--out``, and an existing ``--out`` left untouched.

The matrix is data: (command words with {placeholders}, expected fragment of the message). The
placeholders name files made once per session (a binary file, invalid JSON/YAML, ...)."""

from __future__ import annotations

import json
import os

import pytest
from _runs import cli

TEXT = "The quick brown fox jumps over the lazy dog. Pruning removes heads and channels. " * 60
M = "--model tiny-llama"
P = "prune " + M + " --calib {text} --n-samples 2 --seq-len 16 --no-eval --out {out}"
A = "accel " + M + " --data {text} --ratio 0.1 --phases 1 --seq-len 16 --out {out}"
F = "finetune " + M + " --data {alpaca} --seq-len 64 --out {out}"
E = "pretrain-prune " + M + " --data {text} --target-params 120K --seq-len 16 --out {out}"
S = "search " + M + " --ratio 0.1 --trials 1 --n-samples 2 --pool-size 2 --seq-len 16 --calib {text} --eval-text {text} --study {out}"
X = "export " + M + " --format gguf --out {out}.gguf"

CASES = [
    # argument syntax: argparse, shortened to one line
    (P + " --ratio abc", "invalid float value: 'abc'"),
    (P + " --n-samples many", "invalid int value"),
    (A.replace("--ratio 0.1", "--ratio abc"), "invalid float value"),
    (E + " --quantum x", "invalid float value"),
    ("prune --bogus-flag", "unrecognized arguments"),
    (X + " --format zip", "invalid choice"),
    # values out of range
    (P + " --ratio 1.5", "ratio must be in [0, 1)"),
    (P + " --ratio -0.1", "ratio must be in [0, 1)"),
    (P + " --n-samples 0", "n_samples must be >= 1"),
    (P + " --target-params 12X3", "cannot read parameter count"),
    (P.replace("--calib", "--layers 9-x --calib"), "cannot read layer range"),
    (P + " --method nosuch", "nosuch"),
    (P + " --option steps", "--option expects KEY=VALUE"),
    (F + " --epochs 0", "--epochs must be >= 1"),
    (S + " --pool-size 1 --n-samples 3", "--pool-size >= --n-samples"),
    (X + " --dtype q2", "unknown dtype 'q2'"),
    # models
    (P.replace(M, "--model in/no_such_model_dir"), "not found locally"),
    ("inspect in/no_such_model_dir", "not found locally"),
    ("eval --model in/no_such_model_dir --text {text}", "not found locally"),
    (F.replace(M, "--model ./nothing_here"), "not found locally"),
    (A.replace(M, "--model missing.gguf"), "GGUF file missing.gguf does not exist"),
    ("bench-speed --model nosuchname", "unknown model 'nosuchname'"),
    ("inspect {emptydir}", "has no config.json"),
    ("inspect {text}", "neither a model directory nor a .gguf file"),
    ("inspect {badreport}", "sculpt_report.json:1:2: report is not valid JSON"),
    (F.replace(M, "--model {badreport}"), "sculpt_report.json:1:2: report is not valid JSON"),
    (X.replace(M, "--model {badconfig}"), "not readable JSON"),
    # text, JSONL and YAML inputs
    (P.replace("{text}", "in/nosuchfile"), "does not exist"),
    (P.replace("{text}", "{binary}"), "not UTF-8"),
    (P.replace("{text}", "{binaryjsonl}"), "not UTF-8"),
    (P.replace("{text}", "{badjsonl}"), ":2: not valid JSON"),
    (P.replace("{text}", "{empty}"), "is empty"),
    (S.replace("--calib {text}", "--calib {binaryjsonl}"), "not UTF-8"),
    (S.replace("--calib {text}", "--calib in/nosuchfile"), "does not exist"),
    (S.replace("--eval-text {text}", "--eval-text {binary}"), "not UTF-8"),
    (A.replace("{text}", "{binary}"), "not UTF-8"),
    (A.replace("{text}", "{badjsonl}") + " --format alpaca", ":2: not valid JSON"),
    (A.replace("{text}", "nosuch.txt"), "does not exist"),
    (F.replace("{alpaca}", "{binary}"), "not UTF-8"),
    (F.replace("{alpaca}", "{badjsonl}"), "--skip-bad"),
    (F.replace("{alpaca}", "{longprompts}"), "no label tokens"),
    (E.replace("{text}", "{binary}"), "not UTF-8"),
    ("eval " + M + " --text {binary}", "not UTF-8"),
    ("eval " + M + " --text nosuch.txt", "does not exist"),
    ("eval " + M + " --mc-file {badjsonl_task}", "not valid JSON"),
    (P + " --config {badyaml}", "bad.yaml:2:7: config is not valid YAML"),
    (P + " --config {unknownyaml}", "unknown key 'bogus' in prune recipe; known: model, method"),
    (P + " --config nosuch.yaml", "does not exist"),
    (P + " --config {listyaml}", "must be a mapping"),
    # outputs: unwritable, a file, or existing without --overwrite
    (P.replace("{out}", "/proc/x/out"), "cannot be written"),
    (A.replace("{out}", "/proc/x/out"), "cannot be written"),
    (F.replace("{out}", "/proc/x/out"), "cannot be written"),
    (E.replace("{out}", "/proc/x/out"), "cannot be written"),
    (S.replace("{out}", "/proc/x/study"), "cannot be written"),
    (X.replace("{out}.gguf", "/proc/x/m.gguf"), "cannot be written"),
    (P.replace("{out}", "{text}"), "exists and is not a directory"),
    (P.replace("{out}", "{existing}"), "already exists; pass --overwrite"),
    (F.replace("{out}", "{existing}"), "already exists; pass --overwrite"),
    (A.replace("{out}", "{existing}"), "already exists; pass --overwrite"),
    (E.replace("{out}", "{existing}"), "already exists; pass --overwrite"),
    (X.replace("{out}.gguf", "{existing_gguf}"), "already exists"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "in").mkdir()
    made = {
        "text": ("text.txt", TEXT),
        "alpaca": ("alpaca.jsonl", "".join(json.dumps({"instruction": "Say yes.", "output": "yes"}) + "\n" for _ in range(8))),
        "longprompts": ("long.jsonl", "".join(json.dumps({"instruction": "x " * 200, "output": "yes"}) + "\n" for _ in range(4))),
        "badjsonl": ("bad.jsonl", '{"text": "fine line"}\n{"text": broken\n'),
        "badjsonl_task": ("task.jsonl", '{"context": "a", "choices": ["b", "c"], "label": 0}\n{oops\n'),
        "empty": ("empty.txt", "  \n\n"),
        "badyaml": ("bad.yaml", "model: [1, 2\nmethod: x\n"),
        "unknownyaml": ("unknown.yaml", "bogus: 1\n"),
        "listyaml": ("list.yaml", "- 1\n- 2\n"),
    }
    paths = {}
    for key, (name, content) in made.items():
        (root / name).write_text(content)
        paths[key] = root / name
    for key, name in (("binary", "binary.bin"), ("binaryjsonl", "binary.jsonl")):
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20)
        paths[key] = root / name
    (root / "emptydir").mkdir()
    paths["emptydir"] = root / "emptydir"
    (root / "badconfig").mkdir()
    (root / "badconfig" / "config.json").write_text("{not json")
    paths["badconfig"] = root / "badconfig"
    from llmsculpt.testing import tiny_model, tiny_tokenizer

    tiny_model("tiny-llama").save_pretrained(root / "badreport")
    tiny_tokenizer().save_pretrained(root / "badreport")
    (root / "badreport" / "sculpt_report.json").write_text("{oops")
    paths["badreport"] = root / "badreport"
    return root, paths


def _expand(template: str, root, paths, out) -> list[str]:
    values = {k: str(v) for k, v in paths.items()}
    existing = root / "existing"
    existing.mkdir(exist_ok=True)
    (existing / "keep.txt").write_text("precious")
    (root / "existing.gguf").write_bytes(b"precious")
    values |= {"out": str(out), "existing": str(existing), "existing_gguf": str(root / "existing.gguf")}
    return template.format(**values).split()


@pytest.mark.parametrize("template,fragment", CASES, ids=[f"{i:02d}-{c.split()[0]}" for i, (c, _) in enumerate(CASES)])
def test_bad_input(files, template, fragment, tmp_path):
    root, paths = files
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(root)  # relative paths like in/nosuchfile are relative to a directory that has in/
    try:
        rc, stdout, err = cli(*_expand(template, root, paths, out))
    finally:
        os.chdir(cwd)
    assert rc == 2, f"rc {rc}; stderr: {err}"
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert not out.exists() and not out.with_suffix(".gguf").exists()
    assert (root / "existing" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in (root / "existing").iterdir()) == ["keep.txt"]
    assert (root / "existing.gguf").read_bytes() == b"precious"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # no temporary directories left beside outputs
