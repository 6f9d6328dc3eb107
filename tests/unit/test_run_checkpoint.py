"""The run checkpoint's atomic swap, its fallback after a kill between renames, and the log reader."""

from __future__ import annotations

import json
import os

import pytest

from llmsculpt.errors import SculptError
from llmsculpt.run.checkpoint import _swap_in, latest, read_log


def _write(directory, step: int) -> None:
    _swap_in(directory, "last", lambda tmp: (tmp / "state.json").write_text(json.dumps({"step": step})))


def test_a_new_checkpoint_replaces_the_last_one(tmp_path):
    _write(tmp_path, 1)
    _write(tmp_path, 2)
    assert json.loads((latest(tmp_path) / "state.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_killed_between_the_renames_the_previous_checkpoint_is_found_and_then_cleaned(tmp_path):
    _write(tmp_path, 1)
    os.replace(tmp_path / "last", tmp_path / ".last.tmp-abc-old")  # killed after the first rename
    (tmp_path / ".last.tmp-def").mkdir()  # and a half-written new one
    assert json.loads((latest(tmp_path) / "state.json").read_text()) == {"step": 1}
    _write(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    with pytest.raises(SculptError, match="nothing to resume"):
        latest(tmp_path / "none")


def test_the_log_keeps_entries_before_the_checkpoint_and_skips_a_torn_last_line(tmp_path):
    lines = [json.dumps({"step": k, "loss": 1.0}) for k in range(4)] + ['{"step": 4, "lo']
    (tmp_path / "log.jsonl").write_text("\n".join(lines))
    assert [e["step"] for e in read_log(tmp_path, 3)] == [0, 1, 2]
    assert read_log(tmp_path / "none", 3) == []
