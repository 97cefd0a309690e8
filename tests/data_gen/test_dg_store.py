"""Result journals: resume bookkeeping, refusals that keep them duplicate-free, and atomic whole-file writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_gen.errors import InputError
from data_gen.store import RowStore, done_record, failed_record, input_sha, sidecar


def _row(i: int) -> dict:
    return {"id": f"r{i}", "premise": "P", "hypothesis": "H", "label": i % 2}


def test_pending_skips_done_rows_and_failed_ones_unless_asked(tmp_path):
    rows = [_row(i) for i in range(4)]
    store = RowStore(tmp_path / "t.jsonl")
    store.write_done(done_record(rows[0], {"x": 1}, {}))
    store.write_failed(failed_record(rows[1], "bad label", {}))
    store.close()
    store = RowStore(tmp_path / "t.jsonl")  # as a rerun sees it
    assert [r["id"] for r in store.pending(rows, retry_failed=False)] == ["r2", "r3"]
    assert [r["id"] for r in store.pending(rows, retry_failed=True)] == ["r1", "r2", "r3"]
    store.write_done(done_record(rows[1], {"x": 2}, {}))
    store.close()
    store = RowStore(tmp_path / "t.jsonl")
    assert set(store.done) == {"r0", "r1"} and not store.failed  # a later success supersedes the failure


def test_a_done_row_is_written_once_and_a_repeat_is_counted_not_fatal(tmp_path):
    store = RowStore(tmp_path / "t.jsonl")
    store.write_done(done_record(_row(0), {"x": 1}, {}))
    store.write_done(done_record(_row(0), {"x": 2}, {}))
    store.close()
    assert store.duplicates == 1
    assert [json.loads(line)["x"] for line in (tmp_path / "t.jsonl").read_text().splitlines()] == [1]


def test_a_journal_with_duplicated_ids_is_read_keeping_the_first(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 1}\n{"id": "a", "x": 2}\n', encoding="utf-8")
    store = RowStore(path)
    assert store.done["a"]["x"] == 1 and set(store.done) == {"a", "b"} and store.duplicates == 1


def test_results_from_changed_input_are_refused(tmp_path):
    rows = [_row(0), _row(1)]
    store = RowStore(tmp_path / "t.jsonl")
    for r in rows:
        store.write_done(done_record(r, {}, {}))
    store.check_inputs(rows)
    rows[1] = {**rows[1], "hypothesis": "changed"}
    with pytest.raises(InputError, match="1 id\\(s\\) whose input rows changed \\('r1'\\)"):
        store.check_inputs(rows)
    assert input_sha(rows[0]) == input_sha(dict(reversed(rows[0].items())))  # key order does not matter


def test_a_corrupt_line_inside_a_journal_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(InputError, match="t.jsonl:2: not a JSON line"):
        RowStore(path)


def test_sidecar_names():
    assert sidecar(Path("w/thoughts.jsonl"), "ledger") == Path("w/thoughts.ledger.jsonl")
    assert sidecar(Path("w/thoughts.jsonl"), "batch", ".json") == Path("w/thoughts.batch.json")
