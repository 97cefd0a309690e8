"""generate end to end through the real SDK against the loopback server: faults, resume, budget, dry run, key."""

from __future__ import annotations

import json
import logging

import pytest

from data_gen.fake_api import FAULTS


def _ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


def test_every_row_done_with_usage_and_a_consistent_ledger(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server = fake_api()
    out = tmp_path / "out" / "thoughts.jsonl"
    assert dg("generate", "--input", rows_file(30), "--output", out, *flags(server)) == 0
    done = jsonl(out)
    assert sorted(_ids(done)) == sorted(f"r{i}" for i in range(30))
    for r in done:
        assert r["thought_process"].startswith("step 1: ") and " step 3: " in r["thought_process"]
        assert r["predicted_label"] in (0, 1) and r["correct"] == (r["predicted_label"] == r["label"])
        assert r["requests"] == 1 and r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["cost_gbp"] > 0
    ledger = jsonl(out.with_name("thoughts.ledger.jsonl"))
    assert len(ledger) == server.counts["chat"] == 30
    assert sum(x["gbp"] for x in ledger) == pytest.approx(sum(r["cost_gbp"] for r in done))
    summary = json.loads(out.with_name("thoughts.summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["pending"], summary["stopped"]) == (30, 0, 0, None)
    # The request the SDK sent is the one the stage built: JSON mode, the model, few-shot turns.
    body = server.chat_bodies[0]
    assert body["model"] == "open-mistral-7b" and body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_twenty_percent_faults_every_row_ends_done_or_failed_with_a_reason(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    rates = {"rate_429": 0.05, "rate_500": 0.05, "rate_slow": 0.03, "rate_bad_json": 0.04, "rate_bad_label": 0.03}
    server = fake_api(retry_after_s=0.02, slow_s=0.6, seed=3, **rates)
    out = tmp_path / "thoughts.jsonl"
    rc = dg("generate", "--input", rows_file(80), "--output", out, *flags(server, timeout_s=0.25, max_retries=4, max_tries=2))
    done = _ids(jsonl(out))
    failed_path = out.with_name("thoughts.failed.jsonl")
    failed = jsonl(failed_path) if failed_path.exists() else []
    assert rc == (4 if failed else 0)
    assert all(f["reason"] for f in failed)
    assert len(done) == len(set(done))
    assert set(done) | {f["id"] for f in failed} == {f"r{i}" for i in range(80)}
    assert not set(done) & {f["id"] for f in failed}
    assert all(server.counts[f"chat_{fault}"] > 0 for fault in FAULTS), server.counts  # every fault was exercised
    reprompted = [b for b in server.chat_bodies if len(b["messages"]) > 6]
    assert reprompted and all(b["messages"][-1]["content"].startswith("Your reply could not be used") for b in reprompted)


def test_invalid_labels_fail_with_the_reason_and_retry_failed_redoes_them(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    rows = rows_file(6)
    out = tmp_path / "thoughts.jsonl"
    bad = fake_api(rate_bad_label=1.0)
    assert dg("generate", "--input", rows, "--output", out, *flags(bad, max_tries=2)) == 4  # finished, rows failed
    failed = jsonl(out.with_name("thoughts.failed.jsonl"))
    assert len(failed) == 6 and all('"predicted_label" must be the number 0 or 1, got 7' in f["reason"] for f in failed)
    assert bad.counts["chat"] == 12  # two tries each
    good = fake_api()
    assert dg("generate", "--input", rows, "--output", out, *flags(good)) == 4  # still not every row done
    assert good.counts["chat"] == 0  # failed rows are not retried unless asked
    assert dg("generate", "--input", rows, "--output", out, "--retry-failed", *flags(good)) == 0
    assert good.counts["chat"] == 6 and len(jsonl(out)) == 6
    summary = json.loads(out.with_name("thoughts.summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (6, 0)


def test_rerun_skips_done_rows(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server = fake_api()
    rows, out = rows_file(12, fmt="jsonl"), tmp_path / "thoughts.jsonl"
    assert dg("generate", "--input", rows, "--output", out, "--limit", 5, *flags(server)) == 3  # more to do
    assert len(jsonl(out)) == 5
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 0
    done = _ids(jsonl(out))
    assert sorted(done) == sorted(f"r{i}" for i in range(12)) and server.counts["chat"] == 12


def test_budget_stops_before_it_is_exceeded_and_a_rerun_continues(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server = fake_api()
    rows, out = rows_file(40), tmp_path / "thoughts.jsonl"
    budget = 0.0015  # ~15 rows at the fake's usage and open-mistral-7b's price
    assert dg("generate", "--input", rows, "--output", out, "--budget", budget, *flags(server, concurrency=4)) == 3
    spent = sum(x["gbp"] for x in jsonl(out.with_name("thoughts.ledger.jsonl")))
    done = _ids(jsonl(out))
    assert 0 < len(done) < 40 and spent <= budget
    summary = json.loads(out.with_name("thoughts.summary.json").read_text())
    assert summary["stopped"] == "budget" and summary["pending"] == 40 - len(done)
    assert dg("generate", "--input", rows, "--output", out, "--budget", 1.0, *flags(server)) == 0
    done = _ids(jsonl(out))
    assert sorted(done) == sorted(f"r{i}" for i in range(40))
    assert server.counts["chat"] == 40  # nothing was asked twice


def test_dry_run_estimates_and_sends_and_writes_nothing(fake_api, rows_file, dg, flags, tmp_path, capsys):
    server = fake_api()
    out = tmp_path / "out" / "thoughts.jsonl"
    assert dg("generate", "--input", rows_file(25), "--output", out, "--dry-run", "--budget", 2, *flags(server)) == 0
    printed = capsys.readouterr().out
    assert "dry run, generate: 25 of 25 rows to do" in printed and "open-mistral-7b: 25 requests" in printed
    assert "batch API" in printed and "budget £2.0000" in printed
    assert server.counts["chat"] == 0 and not out.parent.exists()


def test_api_key_never_in_outputs_or_logs(fake_api, rows_file, dg, flags, tmp_path, capsys, caplog, monkeypatch, api_key):
    monkeypatch.setenv("MISTRAL_DEBUG", "1")  # would make the SDK log request headers
    caplog.set_level(logging.DEBUG)
    server = fake_api(rate_500=0.2, rate_bad_json=0.2)
    out = tmp_path / "out" / "thoughts.jsonl"
    assert dg("generate", "--input", rows_file(10), "--output", out, "-v", *flags(server, max_retries=1, max_tries=1)) in (0, 4)
    assert dg("reflect", "--input", out, "--output", tmp_path / "out" / "reflected.jsonl", "-v", *flags(server)) in (0, 4)
    assert server.counts["chat"] > 0 and server.counts["unauthorized"] == 0  # the key was sent
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text] + [p.read_text() for p in (tmp_path / "out").iterdir()]
    assert all(api_key not in t for t in texts)


def test_refused_key_is_one_clear_error(fake_api, rows_file, dg, flags, tmp_path, capsys, api_key):
    server = fake_api(api_key="another-key")
    assert dg("generate", "--input", rows_file(5), "--output", tmp_path / "t.jsonl", *flags(server)) == 2
    err = capsys.readouterr().err
    assert "error: the API refused the request with HTTP 401" in err and "Traceback" not in err and api_key not in err


def test_missing_key_is_refused_before_any_call(rows_file, dg, tmp_path, capsys, monkeypatch, prices):
    monkeypatch.delenv("MISTRAL_API_KEY")
    rc = dg("generate", "--input", rows_file(3), "--output", tmp_path / "t.jsonl", "--prices", prices)
    assert rc == 2 and "$MISTRAL_API_KEY is not set" in capsys.readouterr().err


def test_bad_input_rows_are_reported_together_by_file_and_line(fake_api, dg, flags, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("id,premise,hypothesis,label\na,P,H,1\nb,P,H,maybe\nc,,H,0\n", encoding="utf-8")
    server = fake_api()
    out = tmp_path / "out" / "t.jsonl"
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 2
    err = capsys.readouterr().err
    assert f"{rows}:3" in err and "maybe" in err and f"{rows}:4" in err and "Traceback" not in err
    assert server.counts["chat"] == 0 and not out.parent.exists()


def test_changed_input_is_refused_on_resume(fake_api, rows_file, dg, flags, tmp_path, capsys):
    server = fake_api()
    rows, out = rows_file(4), tmp_path / "thoughts.jsonl"
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 0
    rows.write_text(rows.read_text().replace("Hypothesis 2: a kid is outside.", "Hypothesis 2: edited."))
    assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 2
    assert "'r2'" in capsys.readouterr().err


def test_column_mapping(fake_api, dg, flags, jsonl, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"pair": "x1", "sentence1": "A man sleeps.", "sentence2": "A man rests.", "gold": 1}) + "\n")
    out = tmp_path / "t.jsonl"
    mapping = "{id: pair, premise: sentence1, hypothesis: sentence2, label: gold}"
    assert dg("generate", "--input", rows, "--output", out, "--columns", mapping, *flags(fake_api())) == 0
    (row,) = jsonl(out)
    assert (row["id"], row["premise"], row["label"]) == ("x1", "A man sleeps.", 1)
