"""Crash-safe result files: append-only JSONL journals keyed by row id, and atomic whole-file writes.

A stage's ``output`` is its journal of finished rows. Beside it::

    thoughts.jsonl           one line per done row, appended + flushed + fsync'd as each row finishes
    thoughts.failed.jsonl    one line per failed attempt at a row (with the reason); the last one counts
    thoughts.ledger.jsonl    one line per paid API call (tokens, GBP): the budget is checked against its sum
    thoughts.summary.json    counts and cost of the latest run (atomic)
    thoughts.batch.json      batch mode only: the jobs in flight, so a rerun resumes them instead of paying twice

Each record is written with a single ``os.write`` on an ``O_APPEND`` descriptor and fsync'd before the row counts
as done, so SIGKILL at any moment loses at most the requests in flight. A record torn by a crash mid-write (no
trailing newline) is cut off the next time the journal is opened for appending. Done ids are never requested
again, so no id is ever written twice to the done journal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from data_gen.errors import InputError
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


def done_record(row: Record, result: Record, usage: dict[str, Any]) -> Record:
    """A finished row as stored: its id, the stage's result, what it cost, and the input it was made from."""
    return {"id": row["id"], **result, **usage, "input_sha": input_sha(row)}


def failed_record(row: Record, reason: str, usage: dict[str, Any]) -> Record:
    return {"id": row["id"], "reason": reason, **usage, "input_sha": input_sha(row)}


class Journal:
    """An append-only JSONL file; every append is durable when it returns.

    Thread-safe, so the async drivers can run appends (and their fsync, which can take milliseconds on a busy or
    networked disk) in worker threads instead of stalling every request in flight.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def read(self) -> list[tuple[int, Record]]:
        return read_jsonl(self.path)

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
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
        os.fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RowStore:
    """Done and failed rows of one stage output, loaded once and appended to as rows finish."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self._done = Journal(output)
        self._failed = Journal(sidecar(output, "failed"))
        self.done: dict[str, Record] = {}
        for n, rec in self._done.read():
            rid = rec.get("id")
            if not isinstance(rid, str):
                raise InputError(f"{output}:{n}: record without a string 'id'")
            if rid in self.done:
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
        if record["id"] in self.done:  # a bug upstream; refusing keeps the journal duplicate-free
            raise RuntimeError(f"id {record['id']!r} is already done")
        self._done.append(record)
        self.done[record["id"]] = record
        self.failed.pop(record["id"], None)

    def write_failed(self, record: Record) -> None:
        self._failed.append(record)
        self.failed[record["id"]] = record

    def close(self) -> None:
        self._done.close()
        self._failed.close()
