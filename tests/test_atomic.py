"""All-or-nothing writes (checkpoints, predictions, corpus files all go through nlicot.atomic)."""

from __future__ import annotations

import os

import pytest

from nlicot.atomic import atomic_write, atomic_write_text


def test_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "stats.json"
    atomic_write_text(path, "old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["stats.json"]


def test_writer_failure_midway_keeps_old_content(tmp_path):
    path = tmp_path / "sub" / "p.jsonl"
    atomic_write(path, lambda f: f.write(b"complete\n"))

    def half(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert path.read_bytes() == b"complete\n" and os.listdir(path.parent) == ["p.jsonl"]
