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
