"""``python -m data_gen run``: the whole pipeline in one command against the loopback fake API, resumed by
rerunning it after a SIGKILL or a budget stop, paying nothing when it is already finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from data_gen.store import read_jsonl, sidecar

FAST = {"prices": None, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "requests_per_second": None,
        "timeout_s": 2.0, "concurrency": 8, "quiet": True}


def _pipeline(tmp_path: Path, rows: Path, prices: Path, score: bool = False, **top: Any) -> Path:
    """A pipeline YAML with every output under ``tmp_path``; the server URL comes from MISTRAL_SERVER_URL."""
    api = {**FAST, "prices": str(prices)}
    config: dict[str, Any] = {
        "generate": {"input": str(rows), "output": str(tmp_path / "thoughts.jsonl"), **api},
        "reflect": {"output": str(tmp_path / "reflected.jsonl"), **api},
        "build": {"out_dir": str(tmp_path / "corpus"), "val_fraction": 0.2},
        **top,
    }
    if score:
        config["score"] = {"output": str(tmp_path / "scores.jsonl"), "max_rounds": 1, **api}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _spent(tmp_path: Path) -> float:
    return sum(float(rec["gbp"]) for stem in ("thoughts", "reflected", "scores")
               for _, rec in read_jsonl(sidecar(tmp_path / f"{stem}.jsonl", "ledger")))


def _ids(path: Path) -> list[str]:
    return [rec["id"] for _, rec in read_jsonl(path)]


def test_run_does_every_stage_and_a_rerun_of_a_finished_pipeline_pays_nothing(
    fake_api, rows_file, dg, prices, tmp_path, monkeypatch, capsys
):
    server = fake_api()
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    path = _pipeline(tmp_path, rows_file(24), prices, score=True)
    assert dg("run", "--config", path) == 0
    thoughts = [rec for _, rec in read_jsonl(tmp_path / "thoughts.jsonl")]
    wrong = {r["id"] for r in thoughts if not r["correct"]}
    assert len(thoughts) == 24 and wrong and set(_ids(tmp_path / "reflected.jsonl")) == wrong
    assert len(_ids(tmp_path / "scores.jsonl")) == 24  # every corpus thought judged
    corpus = [json.loads(line) for split in ("train", "val") for line in (tmp_path / "corpus" / f"{split}.jsonl").open()]
    assert len(corpus) == 24 and {r["source"] for r in corpus} == {"initial", "reflected"}
    out = capsys.readouterr().out
    assert out.startswith("pipeline summary") and all(s in out for s in ("generate", "reflect", "score", "build"))
    assert f"total £{_spent(tmp_path):.4f}" in out

    chats, spent = server.counts["chat"], _spent(tmp_path)
    ledgers = {p: p.read_bytes() for p in tmp_path.glob("*.ledger.jsonl")}
    assert dg("run", "--config", path) == 0
    assert server.counts["chat"] == chats and _spent(tmp_path) == spent  # nothing asked, nothing paid
    assert {p: p.read_bytes() for p in tmp_path.glob("*.ledger.jsonl")} == ledgers


def test_one_budget_across_stages_stops_with_3_and_a_rerun_continues(fake_api, rows_file, dg, flags, prices, tmp_path,
                                                                     monkeypatch):
    server = fake_api()
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    rows = rows_file(20)
    assert dg("generate", "--input", rows, "--output", tmp_path / "thoughts.jsonl", *flags(server)) == 0  # per-stage
    generated = _spent(tmp_path)
    budget = generated * 1.0001  # covers what generate spent, leaves reflect (almost) nothing
    path = _pipeline(tmp_path, rows, prices, budget=budget)
    chats = server.counts["chat"]
    assert dg("run", "--config", path) == 3
    assert _spent(tmp_path) <= budget  # generate's ledger counted against reflect
    assert json.loads(sidecar(tmp_path / "reflected.jsonl", "summary", ".json").read_text())["stopped"] == "budget"
    assert not (tmp_path / "corpus").exists()  # stopped before build
    assert server.counts["chat"] == chats  # generate had nothing left to do; reflect could not afford a request

    assert dg("run", "--config", path, "--budget", 100) == 0
    assert len(_ids(tmp_path / "reflected.jsonl")) > 0 and (tmp_path / "corpus" / "train.jsonl").is_file()


def test_a_killed_run_resumes_where_it_stopped(fake_api, rows_file, dg, prices, tmp_path, monkeypatch):
    server = fake_api(latency_s=0.03)
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    path = _pipeline(tmp_path, rows_file(80), prices)
    thoughts = tmp_path / "thoughts.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "data_gen", "run", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while len(_ids(thoughts)) < 20:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(_ids(thoughts))
    assert 20 <= before < 80

    assert dg("run", "--config", path) == 0
    ids = _ids(thoughts)
    assert len(ids) == len(set(ids)) == 80  # continued, nothing written twice
    asked = [b["messages"][-1]["content"] for b in server.chat_bodies if "Premise" in b["messages"][-1]["content"]]
    assert len(asked) - len(set(asked)) <= FAST["concurrency"]  # only requests in flight at the kill were re-asked
    assert (tmp_path / "corpus" / "train.jsonl").is_file()


def test_failed_rows_do_not_stop_the_run_and_it_returns_4(fake_api, rows_file, dg, prices, tmp_path, monkeypatch, capsys):
    server = fake_api(rate_bad_label=0.3, seed=5)
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    path = _pipeline(tmp_path, rows_file(30), prices)
    assert dg("run", "--config", path, "--generate.max_tries", 1, "--reflect.max_tries", 3) == 4
    failed = json.loads(sidecar(tmp_path / "thoughts.jsonl", "summary", ".json").read_text())["failed"]
    assert 0 < failed < 30
    corpus = sum(1 for split in ("train", "val") for _ in (tmp_path / "corpus" / f"{split}.jsonl").open())
    assert corpus <= 30 - failed  # build ran on the done rows
    out = capsys.readouterr().out
    assert "generate  exit 4" in out and "failed: " in out and "build     exit 0" in out


def test_the_progress_display_names_the_step_and_counts_the_whole_pipelines_gbp(
    fake_api, rows_file, dg, prices, tmp_path, monkeypatch, caplog
):
    server = fake_api()
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    path = _pipeline(tmp_path, rows_file(12), prices)
    with caplog.at_level("INFO", logger="data_gen"):
        assert dg("run", "--config", path, "--generate.quiet", "false", "--reflect.no-quiet") == 0
    lines = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records if r.name == "data_gen.progress"}
    assert set(lines) == {"generate 1/3", "reflect 2/3"}
    assert all(("rows/s" in line or "s/row" in line) and "ETA" in line for line in lines.values())
    gbp = {stage: float(line.rsplit("£", 1)[1].split()[0]) for stage, line in lines.items()}
    generated = sum(float(rec["gbp"]) for _, rec in read_jsonl(sidecar(tmp_path / "thoughts.jsonl", "ledger")))
    assert gbp["generate 1/3"] == round(generated, 4)
    assert gbp["reflect 2/3"] == round(_spent(tmp_path), 4) > gbp["generate 1/3"]  # the pipeline's £, not the stage's


def test_run_ends_with_its_table_when_generate_has_no_done_row(fake_api, rows_file, dg, prices, tmp_path, monkeypatch,
                                                               capsys):
    """Every generate row failed: nothing to reflect or build, so those steps are skipped, not an error (exit 2)."""
    server = fake_api(rate_bad_json=1.0)
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    path = _pipeline(tmp_path, rows_file(4), prices)
    assert dg("run", "--config", path, "--generate.max_tries", 1) == 4
    out = capsys.readouterr().out
    assert "pipeline summary" in out and "generate  exit 4" in out
    assert "reflect   not run" in out and "build     not run" in out and "total £" in out


def test_a_stage_whose_every_row_failed_does_not_stop_the_later_ones(fake_api, rows_file, dg, prices, tmp_path, capsys):
    """reflect and score fail every row: score goes on without reflections, build without either."""
    good, broken = fake_api(), fake_api(rate_bad_json=1.0)
    path = _pipeline(tmp_path, rows_file(12), prices, score=True)
    rc = dg("run", "--config", path, "--generate.server_url", good.url, "--reflect.server_url", broken.url,
            "--reflect.max_tries", 1, "--score.server_url", broken.url, "--score.max_tries", 1)
    assert rc == 4
    out = capsys.readouterr().out
    assert "reflect   exit 4" in out and "score     exit 4" in out and "build     exit 0" in out
    reflect = json.loads(sidecar(tmp_path / "reflected.jsonl", "summary", ".json").read_text())
    assert reflect["done"] == 0 and reflect["failed"] > 0  # there were rows to reflect, and each failed


def test_every_stages_url_and_key_are_checked_before_anything_is_paid(fake_api, rows_file, dg, prices, tmp_path,
                                                                       monkeypatch, capsys):
    server = fake_api()
    path = _pipeline(tmp_path, rows_file(4), prices)
    monkeypatch.delenv("MISTRAL_SERVER_URL", raising=False)
    assert dg("run", "--config", path, "--generate.server_url", server.url, "--reflect.server_url", "not-a-url") == 2
    assert "reflect: server_url: 'not-a-url' is not an http(s) URL" in capsys.readouterr().err
    monkeypatch.delenv("DG_TEST_NO_SUCH_KEY", raising=False)
    assert dg("run", "--config", path, "--generate.server_url", server.url,
              "--reflect.api_key_env", "DG_TEST_NO_SUCH_KEY") == 2
    assert "reflect: $DG_TEST_NO_SUCH_KEY is not set" in capsys.readouterr().err
    assert server.counts["chat"] == 0 and not (tmp_path / "thoughts.jsonl").exists()


def test_a_build_error_ends_the_run_with_its_table_and_one_error_line_naming_the_stage(
    fake_api, rows_file, dg, prices, tmp_path, monkeypatch, capsys
):
    server = fake_api()
    monkeypatch.setenv("MISTRAL_SERVER_URL", server.url)
    path = _pipeline(tmp_path, rows_file(6), prices)
    assert dg("run", "--config", path, "--build.max_total_tokens", 5) == 2  # every row is too long
    captured = capsys.readouterr()
    assert "pipeline summary" in captured.out and "build     exit 2" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: build: no rows left for the corpus"), captured.err


def test_reflects_summary_counts_the_repeated_ids_of_its_input(fake_api, dg, flags, tmp_path, caplog):
    server = fake_api()
    wrong = {"premise": "A man sleeps.", "hypothesis": "A man runs.", "label": 0, "predicted_label": 1,
             "thought_process": "step 1: a. step 2: b. step 3: entailment, because he moves."}
    lines = [json.dumps({**wrong, "id": f"r{i % 3}", "premise": f"Man {i % 3} sleeps."}) for i in range(5)]
    (tmp_path / "thoughts.jsonl").write_text("\n".join(lines) + "\n")
    assert dg("reflect", "--input", tmp_path / "thoughts.jsonl", "--output", tmp_path / "r.jsonl", *flags(server)) == 0
    assert "2 record(s) repeat an id" in caplog.text
    assert json.loads(sidecar(tmp_path / "r.jsonl", "summary", ".json").read_text())["duplicate_ids"] == 2
