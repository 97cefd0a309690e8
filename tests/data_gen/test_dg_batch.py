"""Batch mode end to end (upload, job, poll, download, merge) through the real SDK, and its crash safety."""

from __future__ import annotations

import json

import pytest

from data_gen.config import ApiStageConfig


def test_generate_then_reflect_in_batch_mode_at_the_batch_price(fake_api, rows_file, dg, flags, jsonl, tmp_path, prices):
    server = fake_api(rate_bad_json=0.15, rate_500=0.1, seed=1)
    thoughts, reflected = tmp_path / "thoughts.jsonl", tmp_path / "reflected.jsonl"
    assert dg("generate", "--input", rows_file(30), "--output", thoughts, "--batch", *flags(server)) == 0
    done = jsonl(thoughts)
    failed_path = thoughts.with_name("thoughts.failed.jsonl")
    failed = {f["id"] for f in jsonl(failed_path)} if failed_path.exists() else set()
    done_ids = [r["id"] for r in done]
    assert len(done_ids) == len(set(done_ids)) and not failed & set(done_ids)
    assert set(done_ids) | failed == {f"r{i}" for i in range(30)}
    assert server.counts["jobs_create"] >= 2  # bad answers and failed requests went into a second round
    assert server.counts["chat"] == 0  # nothing went through the synchronous endpoint
    price = ApiStageConfig(prices=prices).price_table()["open-mistral-7b"]
    for r in done:
        assert r["cost_gbp"] == pytest.approx(price.cost(r["prompt_tokens"], r["completion_tokens"], batch=True))
    ledger = jsonl(thoughts.with_name("thoughts.ledger.jsonl"))
    assert {x["mode"] for x in ledger} == {"batch"} and len({x["key"] for x in ledger}) == len(ledger)
    assert not thoughts.with_name("thoughts.batch.json").exists()

    wrong = [r for r in done if not r["correct"]]
    assert dg("reflect", "--input", thoughts, "--output", reflected, "--batch", *flags(server)) == 0
    fixed = jsonl(reflected)
    assert sorted(r["id"] for r in fixed) == sorted(r["id"] for r in wrong)
    assert all(r["thought_process"].startswith("step 1:") and r["flaw_analysis"] for r in fixed)


def test_a_rerun_resumes_the_running_job_instead_of_paying_twice(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server = fake_api(batch_hold=True)
    rows, out = rows_file(10), tmp_path / "thoughts.jsonl"
    assert dg("generate", "--input", rows, "--output", out, "--batch", "--batch-max-wait-s", 0.05, *flags(server)) == 3
    state = json.loads(out.with_name("thoughts.batch.json").read_text())
    assert state["jobs"][0]["job_id"] and not out.exists()
    summary = json.loads(out.with_name("thoughts.summary.json").read_text())
    assert summary["stopped"] == "batch" and summary["pending"] == 10

    # As if the process had died between creating the job and saving its id: the tag finds it again.
    state["jobs"][0]["job_id"] = None
    out.with_name("thoughts.batch.json").write_text(json.dumps(state))
    server.release_batches()
    assert dg("generate", "--input", rows, "--output", out, "--batch", *flags(server)) == 0
    assert server.counts["jobs_create"] == 1 and server.counts["jobs_list"] >= 1
    assert sorted(r["id"] for r in jsonl(out)) == sorted(f"r{i}" for i in range(10))
    assert not out.with_name("thoughts.batch.json").exists()


def test_a_re_merged_job_is_neither_charged_nor_written_twice(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server = fake_api(batch_hold=True)
    rows, out = rows_file(6), tmp_path / "thoughts.jsonl"
    assert dg("generate", "--input", rows, "--output", out, "--batch", "--batch-max-wait-s", 0.05, *flags(server)) == 3
    state_path = out.with_name("thoughts.batch.json")
    saved = state_path.read_text()
    server.release_batches()
    assert dg("generate", "--input", rows, "--output", out, "--batch", *flags(server)) == 0
    ledger_lines = len(jsonl(out.with_name("thoughts.ledger.jsonl")))
    state_path.write_text(saved)  # as if killed after merging, before the state was cleared
    assert dg("generate", "--input", rows, "--output", out, "--batch", *flags(server)) == 0
    assert len(jsonl(out)) == 6 and len(jsonl(out.with_name("thoughts.ledger.jsonl"))) == ledger_lines
    assert server.counts["jobs_create"] == 1


def test_batch_budget_submits_only_what_fits(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server = fake_api()
    rows, out = rows_file(30), tmp_path / "thoughts.jsonl"
    budget = 0.0006  # the cost bound of roughly a dozen requests at the batch price
    assert dg("generate", "--input", rows, "--output", out, "--batch", "--budget", budget, *flags(server)) == 3
    spent = sum(x["gbp"] for x in jsonl(out.with_name("thoughts.ledger.jsonl")))
    assert 0 < len(jsonl(out)) < 30 and spent <= budget
    assert dg("generate", "--input", rows, "--output", out, "--batch", *flags(server)) == 0
    assert len(jsonl(out)) == 30
