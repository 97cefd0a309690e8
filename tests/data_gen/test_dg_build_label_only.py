"""build --label-only: rows with a gold label and no paid thought enter the corpus as source label_only, split by
the same content hash, counted in the stats; a pair that already has a thought is not repeated; nlicot reads it."""

from __future__ import annotations

import json
from pathlib import Path

from nlicot.corpus import load_rows


def _thought(label: int) -> str:
    verdict = "entailment, because the premise says so" if label else "no entailment, because the premise does not say so"
    return f"step 1: The premise states a fact. step 2: The hypothesis restates part of it. step 3: {verdict}."


def test_label_only_rows_are_carried_counted_and_readable(dg, tmp_path: Path) -> None:
    paid = [{"id": f"t{i}", "premise": f"A person number {i} walks a dog.", "hypothesis": "Someone walks.",
             "label": i % 2, "thought_process": _thought(i % 2), "predicted_label": i % 2} for i in range(6)]
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text("".join(json.dumps(r) + "\n" for r in paid))
    labels = tmp_path / "labels.csv"
    labels.write_text("premise,hypothesis,label\n" + "".join(f"A cat number {i} sleeps.,A cat rests.,{i % 2}\n"
                                                           for i in range(10))
                      + "A person number 0 walks a dog.,Someone walks.,0\n")  # t0's pair: it has a thought
    out = tmp_path / "corpus"
    assert dg("build", "--thoughts", thoughts, "--label-only", labels, "--out-dir", out, "--quiet",
              "--val-fraction", 0.2) == 0
    rows = [r for name in ("train", "val") for r in map(json.loads, (out / f"{name}.jsonl").read_text().splitlines())]
    only = [r for r in rows if r["source"] == "label_only"]
    assert len(only) == 10 and all(r["thought_process"] is None and r["id"].startswith("p-") for r in only)
    assert len(rows) == 16 and len({(r["premise"], r["hypothesis"]) for r in rows}) == 16
    stats = json.loads((out / "stats.json").read_text())
    assert stats["selection"]["label_only"] == 10 and stats["selection"]["label_only_has_thought"] == 1
    assert stats["selection"]["corpus"] == 16
    assert sum(s["by_source"].get("label_only", 0) for s in stats["splits"].values()) == 10
    train = load_rows(str(out / "train.jsonl"), label_only=True)  # nlicot's reader takes the file as it is
    assert {r["source"] for r in train} <= {"initial", "label_only"}


def test_a_broken_label_only_file_is_one_error(dg, tmp_path: Path, capsys) -> None:
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text(json.dumps({"id": "t0", "premise": "A dog runs.", "hypothesis": "An animal runs.", "label": 1,
                                    "thought_process": _thought(1), "predicted_label": 1}) + "\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("premise,hypothesis,label\nA cat sleeps.,A cat rests.,7\n")
    code = dg("build", "--thoughts", thoughts, "--label-only", labels, "--out-dir", tmp_path / "c", "--quiet")
    err = capsys.readouterr().err
    assert code != 0 and "labels.csv:2: field 'label' must be 0 or 1" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
