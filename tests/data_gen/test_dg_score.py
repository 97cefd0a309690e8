"""score: judge every corpus thought; rewrite the weak ones until they pass, within rounds and budget."""

from __future__ import annotations

import json

import pytest

from data_gen import prompts
from data_gen.errors import BudgetExhausted
from data_gen.row_workflow import Reply
from data_gen.stages import score
from data_gen.stages.score import ScoreConfig


def _thoughts(tmp_path, fake_api, rows_file, dg, flags):
    server = fake_api()
    thoughts, reflected = tmp_path / "thoughts.jsonl", tmp_path / "reflected.jsonl"
    assert dg("generate", "--input", rows_file(16), "--output", thoughts, *flags(server)) == 0
    assert dg("reflect", "--input", thoughts, "--output", reflected, *flags(server)) == 0
    return server, thoughts, reflected


def test_weak_thoughts_are_rewritten_until_they_pass(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server, thoughts, reflected = _thoughts(tmp_path, fake_api, rows_file, dg, flags)
    out = tmp_path / "scores.jsonl"
    assert dg("score", "--input", thoughts, "--reflected", reflected, "--output", out, *flags(server)) == 0
    scored = jsonl(out)
    assert len(scored) == 16 and {r["source"] for r in scored} == {"initial", "reflected"}
    first_pass = [r for r in scored if r["rounds"] == 0]
    rewritten = [r for r in scored if r["rounds"] > 0]
    assert first_pass and rewritten  # the fake judge passes some thoughts and fails others
    for r in rewritten:
        assert min(r["history"][0][k] for k in prompts.SCORE_KEYS) < 4 and r["passed"]
        assert "(revised)" in r["thought_process"] and r["original_thought_process"] == r["history"][0]["thought_process"]
    assert all(r["passed"] and r["thought_process"] == r["original_thought_process"] for r in first_pass)


def test_zero_rounds_only_judges(fake_api, rows_file, dg, flags, jsonl, tmp_path):
    server, thoughts, reflected = _thoughts(tmp_path, fake_api, rows_file, dg, flags)
    before = server.counts["chat"]
    out = tmp_path / "scores.jsonl"
    assert dg("score", "--input", thoughts, "--output", out, "--max-rounds", 0, *flags(server)) == 0
    scored = jsonl(out)
    assert server.counts["chat"] - before == len(scored) and all(r["rounds"] == 0 for r in scored)
    assert not all(r["passed"] for r in scored)


def _judged(coherence: int) -> Reply:
    return Reply(json.dumps({"coherence": coherence, "correctness": 5, "brevity": 5, "critique": "Vague step 2."}), 10, 5, "judge")


def test_when_the_budget_runs_out_mid_loop_the_best_thought_so_far_is_kept(tmp_path):
    cfg = ScoreConfig(input=tmp_path / "unused.jsonl", output=tmp_path / "s.jsonl", max_rounds=3)
    thought = "step 1: a. step 2: b. step 3: entailment, because c."
    row = {"id": "r1", "premise": "P.", "hypothesis": "H.", "label": 1, "thought_process": thought, "source": "initial"}
    (tmp_path / "unused.jsonl").write_text("")  # a stage with no rows: only its workflow is used here
    workflow = score.stage(cfg).workflow(row)
    judge_request = next(workflow)
    assert judge_request.model == cfg.model
    improve_request = workflow.send(_judged(2))
    assert improve_request.model == cfg.improve_model and "Critique: Vague step 2." in improve_request.messages[-1]["content"]
    with pytest.raises(StopIteration) as done:
        workflow.throw(BudgetExhausted("budget reached"))
    record = done.value.value
    assert record["stopped"] == "budget" and record["thought_process"] == thought and not record["passed"]
    assert record["scores"] == {"coherence": 2, "correctness": 5, "brevity": 5}
