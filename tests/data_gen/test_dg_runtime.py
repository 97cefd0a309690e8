"""Runtime failures through the real SDK and CLI: outages, exit statuses, the output lock, replayed replies,
the dry-run bound, file modes and empty stage outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_api import FakeConfig, FakeMistral
from test_dg_client import closed_port

from data_gen import prompts
from data_gen.config import ApiStageConfig
from data_gen.errors import OutputLocked
from data_gen.ledger import Ledger
from data_gen.store import OutputLock


def _summary(out: Path) -> dict:
    return json.loads(out.with_name(f"{out.stem}.summary.json").read_text())


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# --- transient is not failed ---


def test_a_closed_port_stops_the_stage_with_one_line_rows_pending_and_a_rerun_continues(
    rows_file, dg, flags, fake_api, tmp_path, capsys, jsonl
):
    rows, out = rows_file(5), tmp_path / "thoughts.jsonl"
    port = closed_port()
    dead = type("Dead", (), {"url": f"http://127.0.0.1:{port}"})()
    started = time.monotonic()
    # The shipped backoff (1 s, doubling) and outage window (5 s): what a user who typos the port sees.
    rc = dg("generate", "--input", rows, "--output", out, *flags(dead, backoff_base_s=1.0, backoff_max_s=60.0))
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    print(f"closed port: stopped after {elapsed:.2f}s with the default outage_s=5")
    assert rc == 3
    assert _error_lines(err) == [
        next(line for line in err.splitlines() if line.startswith(f"error: cannot reach http://127.0.0.1:{port} (connection refused"))
    ]
    assert "5 rows still pending: rerun the same command to continue" in err
    assert "Traceback" not in err and "WARNING" not in err
    assert 5.0 <= elapsed < 12.0, elapsed  # the 5 s window, plus at most one backoff step and start-up
    summary = _summary(out)
    assert (summary["done"], summary["failed"], summary["pending"], summary["stopped"]) == (0, 0, 5, "unreachable")
    assert not out.with_name("thoughts.failed.jsonl").exists()  # transient is not failed
    server = fake_api()
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 0  # a plain rerun continues
    assert len(jsonl(out)) == 5 and server.counts["chat"] == 5


def test_a_server_that_dies_mid_run_is_detected_quickly_and_the_rerun_finishes(
    rows_file, dg, flags, fake_api, tmp_path, capsys, jsonl, api_key
):
    rows, out = rows_file(150), tmp_path / "thoughts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_api.py")), "--latency-s", "0.02", "--api-key", api_key],
        stdout=subprocess.PIPE, text=True,
    )
    killed_at: list[float] = []

    def kill_after_some_rows() -> None:
        while not out.exists() or out.read_bytes().count(b"\n") < 20:
            time.sleep(0.01)
        proc.kill()
        killed_at.append(time.monotonic())

    try:
        url = proc.stdout.readline().strip()
        watcher = threading.Thread(target=kill_after_some_rows, daemon=True)
        watcher.start()
        rc = dg("generate", "--input", rows, "--output", out, *flags(type("S", (), {"url": url})(), outage_s=1.0))
        returned_at = time.monotonic()
        print(f"outage detected {returned_at - killed_at[0]:.2f}s after the server was killed (outage_s=1)")
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert rc == 3 and killed_at
    assert len(_error_lines(err)) == 1 and f"cannot reach {url}" in _error_lines(err)[0]
    assert returned_at - killed_at[0] < 4.0, returned_at - killed_at[0]  # outage_s=1 plus a backoff step
    summary = _summary(out)
    assert summary["failed"] == 0 and summary["pending"] == 150 - summary["done"] > 0
    server = fake_api()
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 0
    ids = [r["id"] for r in jsonl(out)]
    assert len(ids) == len(set(ids)) == 150


@pytest.mark.parametrize("url", ["not-a-url", "http://", "localhost:8000"])
def test_a_malformed_server_url_is_refused_before_any_work(rows_file, dg, flags, tmp_path, capsys, url):
    out = tmp_path / "out" / "thoughts.jsonl"
    assert dg("generate", "--input", rows_file(3), "--output", out, *flags(type("S", (), {"url": url})())) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"error: server_url: {url!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8000)"]
    assert not out.parent.exists()


# --- exit status tells the truth ---


class _Always400(FakeMistral):
    """Refuses every chat request the way the Mistral API refuses an unknown model."""

    def chat(self, body):
        self._count("chat")
        return 400, {"object": "error", "message": f"Invalid model: {body.get('model')}", "type": "invalid_model",
                     "param": None, "code": "1500"}, {}


def test_every_request_refused_with_400_fails_the_rows_and_exits_4_with_the_reasons(
    rows_file, dg, flags, tmp_path, capsys, api_key
):
    out = tmp_path / "thoughts.jsonl"
    with _Always400(FakeConfig(api_key=api_key)) as server:
        assert dg("generate", "--input", rows_file(5), "--output", out, *flags(server)) == 4
    summary = _summary(out)
    assert (summary["done"], summary["failed"], summary["pending"]) == (0, 5, 0)
    (top,) = summary["failure_reasons"]
    assert top["rows"] == 5 and top["reason"].startswith("HTTP 400") and "Invalid model" in top["reason"]
    assert "0 done, 5 failed, 0 pending (failed: 5x HTTP 400" in capsys.readouterr().err


def test_zero_done_rows_make_reflect_and_build_say_there_is_nothing_to_do(rows_file, dg, flags, fake_api, tmp_path, capsys):
    out = tmp_path / "thoughts.jsonl"
    server = fake_api(rate_bad_label=1.0)
    assert dg("generate", "--input", rows_file(4), "--output", out, *flags(server, max_tries=1)) == 4
    capsys.readouterr()
    assert dg("reflect", "--input", out, "--output", tmp_path / "reflected.jsonl", *flags(server)) == 2
    err = capsys.readouterr().err
    assert f"error: {out}: 0 done, 4 failed: nothing to reflect" in err and "file not found" not in err
    assert dg("build", "--thoughts", out, "--out-dir", tmp_path / "corpus", "--quiet") == 2
    assert f"{out}: 0 done, 4 failed: nothing to build" in capsys.readouterr().err


def test_reflect_with_no_wrong_label_leaves_an_empty_result_for_build(dg, flags, fake_api, tmp_path, jsonl):
    thoughts, reflected = tmp_path / "thoughts.jsonl", tmp_path / "reflected.jsonl"
    rows = [{"id": f"r{i}", "premise": f"A dog runs in field {i}.", "hypothesis": "An animal moves.", "label": 1,
             "thought_process": "step 1: a dog runs. step 2: a dog is an animal. step 3: so an animal moves.",
             "predicted_label": 1} for i in range(3)]
    thoughts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    server = fake_api()
    assert dg("reflect", "--input", thoughts, "--output", reflected, *flags(server)) == 0
    assert reflected.is_file() and jsonl(reflected) == [] and server.counts["chat"] == 0


# --- one writer per output ---


def test_a_second_run_on_a_locked_output_exits_at_once_naming_the_holder(rows_file, dg, flags, fake_api, tmp_path, capsys):
    rows, out = rows_file(40), tmp_path / "thoughts.jsonl"
    server = fake_api(latency_s=0.2)
    first = subprocess.Popen([sys.executable, "-m", "data_gen", "generate", "--input", str(rows), "--output", str(out),
                              *flags(server, concurrency=1)], stderr=subprocess.PIPE)
    try:
        lock = out.with_name("thoughts.lock")
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 2
        assert time.monotonic() - started < 2.0
        (line,) = _error_lines(capsys.readouterr().err)
        assert f"is being written by another data_gen run (pid {first.pid}" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The OS released the killed holder's lock: a rerun proceeds and finishes.
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 0


def test_the_lock_is_exclusive_between_open_files(tmp_path):
    out = tmp_path / "thoughts.jsonl"
    with OutputLock(out), pytest.raises(OutputLocked, match=f"pid {os.getpid()}"), OutputLock(out):
        pass
    with OutputLock(out):  # released on exit
        pass


def test_reflect_on_an_output_written_twice_keeps_each_id_once(rows_file, dg, flags, fake_api, tmp_path, jsonl):
    thoughts, reflected = tmp_path / "thoughts.jsonl", tmp_path / "reflected.jsonl"
    server = fake_api()
    assert dg("generate", "--input", rows_file(12), "--output", thoughts, *flags(server)) == 0
    thoughts.write_bytes(thoughts.read_bytes() * 2)  # what two unlocked writers left behind
    before = server.counts["chat"]
    assert dg("reflect", "--input", thoughts, "--output", reflected, *flags(server)) == 0
    ids = [r["id"] for r in jsonl(reflected)]
    assert ids and len(ids) == len(set(ids))
    assert server.counts["chat"] - before == len(ids)  # each row paid for once


# --- a kill loses only requests in flight: replies are journalled and replayed ---


class _FirstAnswerUnusable(FakeMistral):
    """Answers a conversation's first try with broken JSON and its re-prompt properly."""

    def _fault(self, kind, body):
        reprompted = any(str(m.get("content", "")).startswith(prompts.REPROMPT_PREFIX) for m in body.get("messages", []))
        return None if reprompted else "bad_json"


def test_a_row_cut_off_mid_workflow_resumes_from_its_journalled_reply(
    rows_file, dg, flags, prices, tmp_path, jsonl, api_key
):
    rows, out = rows_file(1, fmt="jsonl"), tmp_path / "thoughts.jsonl"
    (row,) = jsonl(rows)
    first = prompts.generation_messages(row["premise"], row["hypothesis"])
    cfg = ApiStageConfig(prices=prices)
    budget = Ledger(cfg.price_table()).bound("open-mistral-7b", first, cfg.max_tokens, batch=False)  # no room for a re-prompt
    with _FirstAnswerUnusable(FakeConfig(api_key=api_key)) as server:
        assert dg("generate", "--input", rows, "--output", out, "--budget", budget, *flags(server, concurrency=1)) == 3
        assert server.counts["completions"] == 1 and not out.exists()
        (saved,) = jsonl(out.with_name("thoughts.replies.jsonl"))
        assert saved["id"] == "r0" and saved["attempt"] == 0
        assert dg("generate", "--input", rows, "--output", out, "--budget", 1.0, *flags(server, concurrency=1)) == 0
        assert server.counts["completions"] == 2  # the first answer was not paid for again
        resumed = server.chat_bodies[-1]["messages"]
        assert (resumed[-2]["role"], resumed[-2]["content"]) == ("assistant", saved["text"])
        assert resumed[-1]["content"].startswith(prompts.REPROMPT_PREFIX)
    (done,) = jsonl(out)
    assert done["requests"] == 2
    assert not out.with_name("thoughts.replies.jsonl").exists()  # compacted away once the row ended


# --- dry run ---


def _gbp(printed: str, api: str) -> tuple[float, float]:
    expected, most = re.search(rf"{api} API\s+£([\d.]+)\s+£([\d.]+)", printed).groups()
    return float(expected), float(most)


def test_the_dry_run_upper_bound_covers_every_re_prompt(rows_file, dg, flags, fake_api, tmp_path, capsys, jsonl):
    rows, out = rows_file(8), tmp_path / "thoughts.jsonl"
    server = fake_api(rate_bad_label=1.0)  # every try unusable: each row is asked max_tries times
    assert dg("generate", "--input", rows, "--output", out, "--dry-run", *flags(server)) == 0
    printed = capsys.readouterr().out
    assert "at most (with re-prompts, 3 tries per row): 24 requests" in printed
    _, most = _gbp(printed, "sync")
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 4
    spent = sum(x["gbp"] for x in jsonl(out.with_name("thoughts.ledger.jsonl")))
    assert server.counts["completions"] == 24 and spent <= most, (spent, most)


# --- files are created under the process umask ---


def test_outputs_are_created_with_the_process_umask(rows_file, dg, flags, fake_api, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "thoughts.jsonl"
        server = fake_api(rate_bad_label=0.3)
        assert dg("generate", "--input", rows_file(10), "--output", out, *flags(server, max_tries=1)) == 4
    finally:
        os.umask(old)
    files = sorted(p.name for p in tmp_path.glob("thoughts.*"))
    assert {"thoughts.jsonl", "thoughts.failed.jsonl", "thoughts.ledger.jsonl", "thoughts.summary.json"} <= set(files)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in files}
    assert set(modes.values()) == {0o644}, modes


def test_progress_shows_seconds_per_row_below_one_row_a_second(monkeypatch):
    """A local model at ~35 s a row showed "0.0 rows/s": no rate, no ETA worth reading."""
    from data_gen import progress
    from data_gen.ledger import Ledger

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    rows = progress.RowProgress("generate", 10, Ledger({}), quiet=True)
    assert rows.speed == "- s/row"
    now[0] += 70.0
    rows.advance()
    rows.advance(failed=True)
    assert rows.speed == "35.0 s/row"
    now[0] = 101.0  # the same two rows in one second
    assert rows.speed == "2.0 rows/s"
