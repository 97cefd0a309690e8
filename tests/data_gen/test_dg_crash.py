"""SIGKILL a real ``python -m data_gen generate`` mid-run, twice, then rerun: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from data_gen.store import Journal, RowStore

ROWS = 160
CONCURRENCY = 8


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "data_gen", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, out: Path, lines: int) -> None:
    deadline = time.monotonic() + 60
    while _lines(out) < lines:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_mid_run_loses_only_requests_in_flight_and_duplicates_nothing(fake_api, rows_file, flags, tmp_path):
    server = fake_api(latency_s=0.04)
    out = tmp_path / "thoughts.jsonl"
    argv = ["generate", "--input", str(rows_file(ROWS)), "--output", str(out), *flags(server, concurrency=CONCURRENCY)]

    _kill_when(_start(argv), out, 30)
    _kill_when(_start(argv), out, 90)
    assert 90 <= _lines(out) < ROWS
    final = _start(argv)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()

    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]  # every line is whole JSON
    assert len(ids) == len(set(ids)) == ROWS
    # Each row was requested once, or twice if its request was in flight at a kill; at most CONCURRENCY per kill.
    asked = Counter(re.search(r"Premise (\d+):", b["messages"][-1]["content"]).group(1) for b in server.chat_bodies)
    assert set(asked) == {str(i) for i in range(ROWS)}
    assert max(asked.values()) <= 3  # 3 only if a row was in flight at both kills
    assert sum(n - 1 for n in asked.values()) <= 2 * CONCURRENCY


def test_a_torn_last_line_is_ignored_on_read_and_cut_before_the_next_append(tmp_path):
    out = tmp_path / "thoughts.jsonl"
    out.write_bytes(b'{"id": "a", "x": 1}\n{"id": "b", "x"')  # killed in the middle of a write
    store = RowStore(out)
    assert list(store.done) == ["a"]
    store.write_done({"id": "b", "x": 2})
    store.close()
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"id": "a", "x": 1}, {"id": "b", "x": 2}]


def test_journal_appends_are_durable_one_line_each(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    for i in range(3):
        journal.append({"id": str(i), "text": "line\nbreak é"})
    journal.close()
    assert [rec["id"] for _, rec in Journal(tmp_path / "j.jsonl").read()] == ["0", "1", "2"]
    assert _lines(tmp_path / "j.jsonl") == 3
