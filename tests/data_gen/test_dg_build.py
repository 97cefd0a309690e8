"""build: row selection, nlicot's exact token-length filter, balancing, the hashed split, stats, and training on it."""

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
        load_rows(str(out / f"{name}.jsonl"))  # nlicot's own reader accepts the files

    stats = json.loads((out / "stats.json").read_text())
    assert stats["selection"] == {
        "initial": 8, "reflected": 2, "wrong_without_reflection": 2, "duplicate_pair": 0,
        "quality_verdict_contradicts_label": 0, "quality_no_verdict": 0, "quality_wrong_step_count": 0,
        "quality_too_few_words": 0, "quality_too_many_words": 0, "too_long": 1, "corpus": 9,
    }
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


def _row(i: int, thought: str, label: int = 1, premise: str | None = None) -> dict:
    return {"id": f"q{i}", "premise": premise or f"Person {i} rides a red bicycle to work.", "hypothesis": "Someone cycles.",
            "label": label, "thought_process": thought, "predicted_label": label}


THREE = "step 1: The premise says a person rides a bicycle to work. step 2: Riding a bicycle is cycling. step 3: {}."
QUALITY_ROWS = [
    *(_row(i, THREE.format("entailment, because riding a bicycle is cycling")) for i in range(4)),  # pass everything
    _row(4, THREE.format("no entailment, because the premise says nothing more")),  # verdict contradicts the label
    _row(5, THREE.format("the person is on a bicycle on the way to work")),  # no verdict
    _row(6, "step 1: A person rides a bicycle to work. step 2: That is cycling, so it is entailed."),  # two steps
    _row(7, "step 1: Bicycle. step 2: Cycling. step 3: entailment."),  # 8 words
    _row(8, THREE.format("entailment, because " + "riding a bicycle to work is a way of cycling " * 12)),  # > 100 words
]


@pytest.mark.parametrize(
    ("quality", "removed"),
    [
        ("lenient", {}),  # lenient keeps a verdict the reader finds contradicting (issue 21: it really is lenient)
        ("standard", {"verdict_contradicts_label": 1, "wrong_step_count": 1, "too_few_words": 1}),
        ("strict", {"verdict_contradicts_label": 1, "no_verdict": 1, "wrong_step_count": 1, "too_few_words": 1,
                    "too_many_words": 1}),
        ("{steps: null, min_words: 0}", {"verdict_contradicts_label": 1}),
        ("{max_words: 60, verdict_required: true}", {"verdict_contradicts_label": 1, "no_verdict": 1,
                                                    "wrong_step_count": 1, "too_few_words": 1, "too_many_words": 1}),
    ],
)
def test_quality_rules_filter_and_each_rule_is_counted(dg, tmp_path, quality, removed):
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text("".join(json.dumps(r) + "\n" for r in QUALITY_ROWS))
    out = tmp_path / "c"
    assert dg("build", "--thoughts", thoughts, "--out-dir", out, "--quiet", "--quality", quality, "--val-fraction", 0.2) == 0
    stats = json.loads((out / "stats.json").read_text())
    expected = {rule: removed.get(rule, 0) for rule in stats["quality"]["removed"]}
    assert stats["quality"]["removed"] == expected
    assert {k: v for k, v in stats["selection"].items() if k.startswith("quality_")} == {f"quality_{k}": v for k, v in expected.items()}
    kept = {r["id"] for part in _corpus(out).values() for r in part}
    assert len(kept) == len(QUALITY_ROWS) - sum(removed.values())
    assert ("q4" in kept) == ("verdict_contradicts_label" not in removed)
    n = removed.get("verdict_contradicts_label", 0)
    assert f"| quality verdict contradicts label | {n} |" in (out / "stats.md").read_text()


LABEL_0_STYLE = [  # label-0 conclusions in the style that made the old reader drop every correct label-0 row
    "little of the hypothesis is supported by the premise, so the hypothesis is not entailed and the predicted label is 0",
    "only part of the hypothesis is supported by the premise, so it does not follow",
    "the premise says nothing about work, so the hypothesis cannot be inferred",
]


def test_the_filter_reports_per_label_and_does_not_skew_correct_label_0_rows(dg, tmp_path, caplog):
    rows = [_row(i, THREE.format("entailment, because riding a bicycle is cycling")) for i in range(6)]
    rows += [_row(10 + i, THREE.format(LABEL_0_STYLE[i % 3]), label=0) for i in range(6)]
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c"
    assert dg("build", "--thoughts", thoughts, "--out-dir", out, "--quiet", "--val-fraction", 0.2) == 0
    q = json.loads((out / "stats.json").read_text())["quality"]
    assert q["rows_by_label"] == {"0": 6, "1": 6} and sum(q["removed"].values()) == 0 and q["skews"] == []
    assert not [r for r in caplog.records if "twice the rate" in r.getMessage()]


def test_a_rule_that_removes_one_label_far_more_often_is_warned_about(dg, tmp_path, caplog):
    rows = [_row(i, THREE.format("entailment, because riding a bicycle is cycling")) for i in range(6)]
    rows += [_row(10 + i, THREE.format("entailment, because riding a bicycle is cycling"), label=0) for i in range(3)]
    rows += [_row(20 + i, THREE.format("no entailment, because the premise says nothing of it"), label=0) for i in range(3)]
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c"
    assert dg("build", "--thoughts", thoughts, "--out-dir", out, "--quiet", "--val-fraction", 0.2) == 0
    q = json.loads((out / "stats.json").read_text())["quality"]
    assert q["removed_by_label"]["verdict_contradicts_label"] == {"0": 3, "1": 0}
    assert len(q["skews"]) == 1 and "label 0: 3 of 6" in q["skews"][0]
    assert [r for r in caplog.records if r.levelname == "WARNING" and "verdict_contradicts_label" in r.getMessage()]
    assert "**Warning:** quality rule verdict_contradicts_label" in (out / "stats.md").read_text()


def test_an_unknown_quality_preset_is_refused(dg, tmp_path, capsys):
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text(json.dumps(QUALITY_ROWS[0]) + "\n")
    assert dg("build", "--thoughts", thoughts, "--out-dir", tmp_path / "c", "--quality", "picky") == 2
    assert "quality must be one of lenient, standard, strict" in capsys.readouterr().err


def test_duplicates_are_kept_once_and_a_pair_never_spans_two_splits(dg, tmp_path, capsys):
    good = lambda i, premise=None: _row(i, THREE.format("entailment, because riding a bicycle is cycling"), premise=premise)  # noqa: E731
    rows = [good(i) for i in range(60)]
    rows += [good(100 + i, premise=f"Person  {i} rides a red bicycle\nto work.") for i in range(10)]  # same pairs, new ids
    lines = [json.dumps(r) for r in rows] + [json.dumps(rows[3]), json.dumps({**rows[5], "thought_process": "other"})]
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text("\n".join(lines) + "\n")  # two records repeat an id (two writers on one output)
    out = tmp_path / "c"
    assert dg("build", "--thoughts", thoughts, "--out-dir", out, "--quiet", "--val-fraction", 0.2, "--test-fraction", 0.2) == 0
    assert "repeat an id" in capsys.readouterr().err
    stats = json.loads((out / "stats.json").read_text())
    assert stats["selection"]["duplicate_id"] == 2 and stats["selection"]["duplicate_pair"] == 10
    corpus = _corpus(out)
    pairs = {name: {" ".join((r["premise"] + " " + r["hypothesis"]).split()) for r in part} for name, part in corpus.items()}
    assert sum(len(p) for p in pairs.values()) == 60 == len(set().union(*pairs.values()))  # each pair once, one split
    assert all(len(part) >= 5 for part in corpus.values())  # 20 % of 60 each, give or take the hash

    # Rebuilding from a larger corpus moves no pair to another split (the split is a function of the pair).
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps(good(i)) + "\n" for i in range(200)))
    assert dg("build", "--thoughts", more, "--out-dir", tmp_path / "m", "--quiet", "--val-fraction", 0.2, "--test-fraction", 0.2) == 0
    grown = {" ".join((r["premise"] + " " + r["hypothesis"]).split()): name for name, part in _corpus(tmp_path / "m").items() for r in part}
    assert all(grown[p] == name for name, ps in pairs.items() for p in ps)
