"""Crash-safe result files: append-only JSONL journals keyed by row id, and atomic whole-file writes.

A stage's ``output`` is its journal of finished rows. Beside it::

    thoughts.jsonl           one line per done row, appended + flushed + fsync'd as each row finishes
    thoughts.failed.jsonl    one line per failed attempt at a row (with the reason); the last one counts
    thoughts.ledger.jsonl    one line per paid API call (tokens, GBP): the budget is checked against its sum
    thoughts.replies.jsonl   every paid reply of rows not finished yet (first answer, re-prompts), as it arrives
    thoughts.summary.json    counts and cost of the latest run (atomic)
    thoughts.batch.json      batch mode only: the jobs in flight, so a rerun resumes them instead of paying twice
    thoughts.lock            held (``flock``) by the one run writing this output; holds its pid

Each record is written with a single ``os.write`` on an ``O_APPEND`` descriptor and fsync'd before the row counts
as done, so SIGKILL at any moment loses at most the requests in flight: a row cut off mid-workflow is replayed
from its journalled replies on the next run. A record torn by a crash mid-write (no trailing newline) is cut off
the next time the journal is opened for appending. Done ids are never requested again; a duplicated id (two
writers before the lock existed, a hand-merged file) is kept once and counted, never fatal.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_gen.errors import InputError, OutputLocked
from data_gen.row_workflow import Reply
from nlicot.atomic import atomic_write_text

log = logging.getLogger(__name__)

Record = dict[str, Any]


def sidecar(output: Path, kind: str, suffix: str = ".jsonl") -> Path:
    """``work/thoughts.jsonl`` + ``ledger`` -> ``work/thoughts.ledger.jsonl``."""
    return output.with_name(f"{output.stem}.{kind}{suffix}")


def input_sha(row: Record) -> str:
    """Fingerprint of an input row, stored with its result so an edited input is noticed on resume."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def atomic_write_json(path: Path, obj: Any) -> None:
    """Pretty JSON, all or nothing."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[tuple[int, Record]]:
    """``(line number, object)`` for every line; a torn last line (crash mid-write) is skipped with a warning."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail.strip():
        log.warning("%s: ignoring a torn last line (a writer was killed mid-write)", path)
    records: list[tuple[int, Record]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        records.append((n, obj))
    return records


def missing_results(path: Path, purpose: str) -> str:
    """Why a stage output is absent: nothing ran yet, or every row failed (a journal is created by its first row)."""
    failed_path = sidecar(path, "failed")
    failed = {rec.get("id") for _, rec in read_jsonl(failed_path)}
    if failed:
        return f"{path}: 0 done, {len(failed)} failed: nothing to {purpose} (reasons in {failed_path})"
    return f"{path}: file not found"


def done_record(row: Record, result: Record, usage: dict[str, Any]) -> Record:
    """A finished row as stored: its id, the stage's result, what it cost, and the input it was made from."""
    return {"id": row["id"], **result, **usage, "input_sha": input_sha(row)}


def failed_record(row: Record, reason: str, usage: dict[str, Any]) -> Record:
    return {"id": row["id"], "reason": reason, **usage, "input_sha": input_sha(row)}


class Journal:
    """An append-only JSONL file; every append is durable when it returns.

    Thread-safe, so the async drivers can run appends (and their fsync, which can take milliseconds on a busy or
    networked disk) in worker threads instead of stalling every request in flight. ``fsync=False``: an append
    survives the process being killed (it is in the OS's page cache once ``os.write`` returns) but not a power
    cut; for files whose loss costs only money already accounted for elsewhere (the reply journal).
    """

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._fsync = fsync

    def read(self) -> list[tuple[int, Record]]:
        return read_jsonl(self.path)

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)  # the process umask decides
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # cut a torn tail so the next record starts on its own line
            log.warning("%s: cutting a torn last line left by a crash", self.path)
            os.ftruncate(fd, data.rfind(b"\n") + 1)
        return fd

    def append(self, record: Record) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
            fd = self._fd
            os.write(fd, data)  # one write per record: lines never interleave
        if self._fsync:
            os.fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class OutputLock:
    """One writer per output: an exclusive ``flock`` on ``<stem>.lock``, held for the whole run.

    The OS drops the lock when the process ends, however it ends, so a killed run never leaves a stale lock; the
    file itself stays (removing it would race with a run that has just opened it).
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = sidecar(output, "lock", "")
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise OutputLocked(
                f"{self.output} is being written by another data_gen run (pid {holder}, lock {self.path}); "
                "wait for it to finish or write to another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        for _ in range(5):  # the holder writes its pid just after it gets the lock
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if pid:
                return pid
            time.sleep(0.02)
        return "unknown"

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


class ReplyJournal:
    """Every paid reply of the rows still in progress, keyed by row id and attempt number.

    A row's workflow is a pure function of the replies it was sent (see ``workflow``), so a rerun rebuilds a row
    cut off by a kill by replaying them instead of paying for them again. Rows that ended are compacted away.
    Appends are not fsync'd: a kill cannot lose them, a power cut can (the ledger, which is fsync'd, still counts
    what they cost); an fsync per reply would cost as much disk time as the done journal and the ledger together.
    """

    def __init__(self, output: Path) -> None:
        self._journal = Journal(sidecar(output, "replies"), fsync=False)

    def load(self, rows: Iterable[Record]) -> dict[str, list[Reply]]:
        """The replies saved for ``rows`` (made from the same input), in order; the file then keeps only them."""
        wanted = {r["id"]: input_sha(r) for r in rows}
        found: dict[str, dict[int, Record]] = {}
        records = self._journal.read()
        for _, rec in records:
            rid = rec.get("id")
            if rid in wanted and rec.get("input_sha") == wanted[rid] and isinstance(rec.get("attempt"), int):
                found.setdefault(rid, {}).setdefault(rec["attempt"], rec)
        replies: dict[str, list[Reply]] = {}
        kept: list[Record] = []
        for rid, by_attempt in found.items():
            n = 0
            while n in by_attempt:  # a contiguous run from the first attempt; anything after a gap is unusable
                replies.setdefault(rid, []).append(Reply.from_json(by_attempt[n]))
                kept.append(by_attempt[n])
                n += 1
        if len(kept) < len(records):
            self._rewrite(kept)
        return replies

    def append(self, row: Record, attempt: int, reply: Reply) -> None:
        self._journal.append({"id": row["id"], "attempt": attempt, "input_sha": input_sha(row), **reply.to_json()})

    def keep_only(self, ids: set[str]) -> None:
        """Drop the replies of every row not in ``ids`` (they ended); the file goes when nothing is left."""
        records = [rec for _, rec in self._journal.read()]
        kept = [rec for rec in records if rec.get("id") in ids]
        if len(kept) < len(records):
            self._rewrite(kept)

    def _rewrite(self, records: list[Record]) -> None:
        self._journal.close()
        if records:
            atomic_write_text(self._journal.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        else:
            self._journal.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._journal.close()


class RowStore:
    """Done and failed rows of one stage output, loaded once and appended to as rows finish."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self._done = Journal(output)
        self._failed = Journal(sidecar(output, "failed"))
        self.done: dict[str, Record] = {}
        self.duplicates = 0  # done records whose id was already done: kept once, counted
        for n, rec in self._done.read():
            rid = rec.get("id")
            if not isinstance(rid, str):
                raise InputError(f"{output}:{n}: record without a string 'id'")
            if rid in self.done:
                self.duplicates += 1
                log.warning("%s:%d: id %r appears twice; keeping the first", output, n, rid)
                continue
            self.done[rid] = rec
        self.failed: dict[str, Record] = {}
        for n, rec in self._failed.read():
            rid = rec.get("id")
            if not isinstance(rid, str):
                raise InputError(f"{self._failed.path}:{n}: record without a string 'id'")
            if rid not in self.done:
                self.failed[rid] = rec

    def check_inputs(self, rows: list[Record]) -> None:
        """Refuse to resume onto results made from different input rows (same id, other content)."""
        changed = [r["id"] for r in rows if r["id"] in self.done and self.done[r["id"]].get("input_sha") != input_sha(r)]
        if changed:
            shown = ", ".join(map(repr, changed[:5])) + (" …" if len(changed) > 5 else "")
            raise InputError(
                f"{self.output} holds results for {len(changed)} id(s) whose input rows changed ({shown}); "
                "write to a new --output or delete the old results"
            )

    def pending(self, rows: list[Record], retry_failed: bool) -> list[Record]:
        """Rows still to do, in input order: not done, and not failed unless ``retry_failed``."""
        return [r for r in rows if r["id"] not in self.done and (retry_failed or r["id"] not in self.failed)]

    def write_done(self, record: Record) -> None:
        if record["id"] in self.done:  # never written twice: the first result stays, the repeat is counted
            self.duplicates += 1
            log.warning("%s: id %r is already done; keeping the first result", self.output, record["id"])
            return
        self._done.append(record)
        self.done[record["id"]] = record
        self.failed.pop(record["id"], None)

    def write_failed(self, record: Record) -> None:
        self._failed.append(record)
        self.failed[record["id"]] = record

    def close(self) -> None:
        self._done.close()
        self._failed.close()
