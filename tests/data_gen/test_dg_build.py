"""build: row selection, nlicot's exact token-length filter, balancing, stratified split, stats, and training on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_gen.stages.build import CORPUS_KEYS
from nlicot.corpus import load_rows
from nlicot.prompt import encode_answers, encode_prompts


def _thought(label: int, extra: str = "") -> str:
    verdict = "entailment, because the premise says so" if label else "no entailment, because the premise does not say so"
    return f"step 1: The premise states a fact.{extra} step 2: The hypothesis restates part of it. step 3: {verdict}."


def _generated(i: int, correct: bool, premise: str | None = None, extra: str = "") -> dict:
    label = i % 2
    predicted = label if correct else 1 - label
    return {"id": f"t{i}", "premise": premise or f"A person number {i} walks a dog.", "hypothesis": "Someone walks.",
            "label": label, "thought_process": _thought(predicted, extra), "predicted_label": predicted}


@pytest.fixture
def stage_outputs(tmp_path: Path) -> tuple[Path, Path]:
    """12 generated rows (t0-t7 right, t8-t11 wrong; t2's premise far too long), reflections for t8 and t9."""
    rows = [_generated(i, correct=i < 8) for i in range(12)]
    rows[2] = _generated(2, True, premise="word " * 700)
    rows[4] = _generated(4, True, extra=" It also mentions the weather, the time and the place in some detail.")
    thoughts, reflected = tmp_path / "thoughts.jsonl", tmp_path / "reflected.jsonl"
    thoughts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fixed = [{**rows[i], "thought_process": _thought(rows[i]["label"]), "flaw_analysis": "x"} for i in (8, 9)]
    reflected.write_text("".join(json.dumps(r) + "\n" for r in fixed))
    return thoughts, reflected


def _build(dg, thoughts: Path, reflected: Path, out: Path, *extra) -> int:
    return dg("build", "--thoughts", thoughts, "--reflected", reflected, "--out-dir", out, "--quiet", *extra)


def _corpus(out: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in sorted(out.glob("*.jsonl"))}


def test_build_selects_filters_splits_and_reports(dg, stage_outputs, tmp_path):
    thoughts, reflected = stage_outputs
    out = tmp_path / "corpus"
    assert _build(dg, thoughts, reflected, out, "--val-fraction", 0.25, "--test-fraction", 0.25) == 0
    corpus = _corpus(out)
    assert set(corpus) == {"train", "val", "test"} and all(corpus.values())
    rows = [r for part in corpus.values() for r in part]
    assert sorted(r["id"] for r in rows) == sorted(["t0", "t1", "t3", "t4", "t5", "t6", "t7", "t8", "t9"])
    assert all(list(r) == list(CORPUS_KEYS) for r in rows)
    assert {r["id"]: r["source"] for r in rows if r["source"] == "reflected"} == {"t8": "reflected", "t9": "reflected"}
    assert all(r["thought_process"].endswith("the premise says so.") == (r["label"] == 1) for r in rows)
    for name in corpus:
        assert {r["label"] for r in corpus[name]} == {0, 1}  # stratified
        load_rows(str(out / f"{name}.jsonl"))  # nlicot's own reader accepts the files

    stats = json.loads((out / "stats.json").read_text())
    assert stats["selection"] == {"initial": 8, "reflected": 2, "wrong_without_reflection": 2, "too_long": 1, "corpus": 9}
    model = stats["initial_model"]
    assert model["confusion"] == {"tp": 4, "fp": 2, "tn": 4, "fn": 2}
    assert model["accuracy"] == pytest.approx(8 / 12) and model["precision"] == pytest.approx(4 / 6)
    assert model["recall"] == pytest.approx(4 / 6)
    assert stats["tokens"]["max"] > 512 and sum(stats["tokens"]["histogram"]["counts"]) == 10
    assert sum(s["rows"] for s in stats["splits"].values()) == 9
    assert "| reflected | 2 |" in (out / "stats.md").read_text()
    assert sorted(os.listdir(out)) == ["stats.json", "stats.md", "test.jsonl", "train.jsonl", "val.jsonl"]  # no temp files


def test_the_length_limit_is_nlicots_exact_token_count(dg, stage_outputs, tmp_path, tokenizer):
    thoughts, reflected = stage_outputs
    row = next(json.loads(x) for x in thoughts.read_text().splitlines() if '"t4"' in x)
    (prompt,) = encode_prompts(tokenizer, [row["premise"]], [row["hypothesis"]])
    (answer,) = encode_answers(tokenizer, [row["thought_process"]], [row["label"]])
    exact = len(prompt) + len(answer)  # t4 is the longest row that fits 512
    kept = lambda limit: {r["id"] for part in _corpus(tmp_path / str(limit)).values() for r in part}  # noqa: E731
    assert _build(dg, thoughts, reflected, tmp_path / str(exact), "--max-total-tokens", exact) == 0
    assert "t4" in kept(exact) and len(kept(exact)) == 9
    assert _build(dg, thoughts, reflected, tmp_path / str(exact - 1), "--max-total-tokens", exact - 1) == 0
    assert "t4" not in kept(exact - 1) and len(kept(exact - 1)) == 8


def test_balance_and_a_deterministic_split(dg, stage_outputs, tmp_path):
    thoughts, reflected = stage_outputs
    for name in ("a", "b"):
        assert _build(dg, thoughts, reflected, tmp_path / name, "--balance", "--seed", 3) == 0
    a, b = _corpus(tmp_path / "a"), _corpus(tmp_path / "b")
    assert a == b and "test" not in a
    labels = [r["label"] for part in a.values() for r in part]
    assert labels.count(0) == labels.count(1) == 4  # 5 of label 1 and 4 of label 0 fit: one label-1 row goes
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["selection"]["balanced_out"] == 1


def test_scored_rewrites_replace_thoughts_and_min_score_drops_rows(dg, stage_outputs, tmp_path):
    thoughts, reflected = stage_outputs
    rows = {json.loads(x)["id"]: json.loads(x) for x in thoughts.read_text().splitlines()}
    rewrite = _thought(1, " Rewritten.")
    scores = [
        {**rows["t1"], "thought_process": rewrite, "source": "initial", "scores": {"coherence": 5, "correctness": 5, "brevity": 4}},
        {**rows["t3"], "source": "initial", "scores": {"coherence": 2, "correctness": 5, "brevity": 5}},
    ]
    scored = tmp_path / "scores.jsonl"
    scored.write_text("".join(json.dumps(s) + "\n" for s in scores))
    assert _build(dg, thoughts, reflected, tmp_path / "c", "--scores", scored, "--min-score", 3, "--val-fraction", 0.3) == 0
    rows_out = {r["id"]: r for part in _corpus(tmp_path / "c").values() for r in part}
    assert rows_out["t1"]["thought_process"] == rewrite and "t3" not in rows_out and len(rows_out) == 8


def test_a_malformed_stage_output_is_reported_by_file_and_line(dg, stage_outputs, tmp_path, capsys):
    thoughts, reflected = stage_outputs
    lines = thoughts.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "predicted_label": "yes"})
    thoughts.write_text("\n".join(lines) + "\n")
    assert _build(dg, thoughts, reflected, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert f"{thoughts}:2: missing or invalid predicted_label" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_the_built_corpus_trains_with_nlicot(fake_api, rows_file, dg, flags, tmp_path, repo):
    server = fake_api()
    thoughts, reflected, corpus = tmp_path / "thoughts.jsonl", tmp_path / "reflected.jsonl", tmp_path / "corpus"
    assert dg("generate", "--input", rows_file(24), "--output", thoughts, *flags(server)) == 0
    assert dg("reflect", "--input", thoughts, "--output", reflected, *flags(server)) == 0
    assert _build(dg, thoughts, reflected, corpus, "--val-fraction", 0.25) == 0
    run = subprocess.run(
        [sys.executable, "-m", "nlicot", "fit", "--config", "configs/demo_handwritten.yaml",
         "--data.train_path", str(corpus / "train.jsonl"), "--data.val_path", str(corpus / "val.jsonl"),
         "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "run"), "--checkpoint.dirpath", str(tmp_path / "run" / "ckpt")],
        cwd=repo, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "run" / "ckpt" / "last.ckpt").is_file()  # it trained and checkpointed
