"""All-or-nothing writes (checkpoints, predictions, corpus files all go through nlicot.atomic)."""

from __future__ import annotations

import os

import pytest

from nlicot.atomic import atomic_dir, atomic_write, atomic_write_text


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


def test_atomic_dir_crash_leaves_no_folder_and_no_temp(tmp_path):
    dest = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt), atomic_dir(dest) as tmp:
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_dir_keeps_a_folder_another_process_finished_first(tmp_path):
    dest = tmp_path / "cache"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("mine")
        dest.mkdir()
        (dest / "a").write_text("theirs")
    assert (dest / "a").read_text() == "theirs" and os.listdir(tmp_path) == ["cache"]


def test_atomic_dir_replace_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    dest = tmp_path / "adapter"
    with atomic_dir(dest, replace=True) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(dest, replace=True) as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("killed")
    assert (dest / "w").read_text() == "1"
    with atomic_dir(dest, replace=True) as tmp:
        (tmp / "w").write_text("2")
    assert (dest / "w").read_text() == "2" and os.listdir(tmp_path) == ["adapter"]
