"""SIGKILL a real ``python -m data_gen generate`` at random moments, then rerun: only requests in flight are lost,
nothing is duplicated; torn journal lines are cut."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from data_gen.store import Journal, RowStore

ROWS = 500
CONCURRENCY = 8
KILLS = 5
FAULTS = {"rate_429": 0.05, "rate_500": 0.05, "rate_bad_json": 0.05, "rate_bad_label": 0.05}  # 20 % of requests


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


def test_sigkill_at_random_moments_loses_only_requests_in_flight(fake_api, rows_file, flags, tmp_path, capsys):
    """5 SIGKILLs of a real ``python -m data_gen generate`` during a 500-row run with 20 % faults (429, 500, broken
    JSON, bad labels: the last two are paid and re-prompted), then a rerun: every row ends exactly once, and the
    completions the server was paid for but no row used are at most the requests in flight at the kills."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    server = fake_api(latency_s=0.02, retry_after_s=0.02, seed=seed % 1000, **FAULTS)
    out = tmp_path / "thoughts.jsonl"
    argv = ["generate", "--input", str(rows_file(ROWS)), "--output", str(out), *flags(server, concurrency=CONCURRENCY)]

    for moment in sorted(rng.sample(range(20, ROWS - 40), KILLS)):  # a kill once this many rows are done
        _kill_when(_start(argv), out, max(moment, _lines(out) + 1))
    assert _lines(out) < ROWS
    final = _start(argv)
    _, err = final.communicate(timeout=120)
    assert final.returncode in (0, 4), err.decode()  # 4: some rows failed all their tries (bad answers)

    done = [json.loads(line) for line in out.read_text().splitlines()]  # every line is whole JSON
    failed = {r["id"]: r for r in (json.loads(x) for x in out.with_name("thoughts.failed.jsonl").read_text().splitlines())} \
        if out.with_name("thoughts.failed.jsonl").exists() else {}
    ids = [r["id"] for r in done]
    assert len(ids) == len(set(ids)) and not set(ids) & set(failed)
    assert set(ids) | set(failed) == {f"r{i}" for i in range(ROWS)}
    used = sum(r["requests"] for r in done) + sum(r["requests"] for r in failed.values())
    paid = server.counts["completions"]  # answers the server sent with status 200: what the API bills
    charged = _lines(out.with_name("thoughts.ledger.jsonl"))  # answers that reached the client
    lost = paid - used
    with capsys.disabled():
        print(f"\nkill test (seed {seed}): {paid} paid completions, {charged} reached the client, {used} used by rows, "
              f"{lost} paid and lost over {KILLS} kills (bound {CONCURRENCY * KILLS}); {len(failed)} rows failed")
    assert 0 <= lost <= CONCURRENCY * KILLS, (seed, paid, used)
    # Sharper: an answer that reached the client (its ledger line is written) was saved before it was charged, so
    # no row paid for it twice; only a kill in the microseconds between the two writes could break this.
    assert charged - used <= KILLS, (seed, charged, used)
    assert not out.with_name("thoughts.replies.jsonl").exists()  # every row ended: nothing left to replay


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
