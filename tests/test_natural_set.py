"""The hand-written natural-language set (data/natural) keeps its contract: nlicot reads it, the splits are disjoint
by premise and balanced, the thoughts are three steps whose verdict agrees with the label, and the data card's
tables are the files' real counts.

Why: the set measures a real model outside the templated task (issue 26); a leaked premise, a skewed split or a
card that no longer matches the files after an edit would make those figures quietly wrong.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from data_gen.answers import quality
from nlicot.corpus import load_rows

SPLITS = ("train", "val", "test")
MIN_ROWS = {"train": 150, "val": 50, "test": 100}
CLASSES = {"entailment": 1, "neutral": 0, "contradiction": 0}
PHENOMENA = {
    "lexical", "hypernymy", "negation", "quantifiers", "numbers", "temporal", "coreference", "modality",
    "world_knowledge", "paraphrase", "partial_overlap",
}
REGISTERS = {
    "caption", "news", "dialogue", "fiction", "instructions", "government", "review", "science", "sports", "email",
}
KEYS = {"id", "premise", "hypothesis", "label", "thought_process", "source", "register", "phenomenon", "nli_class"}
THOUGHT = re.compile(r"step 1: (?P<s1>.+?) step 2: (?P<s2>.+?) step 3: (?P<s3>.+)", re.DOTALL)
CONCLUSION = {1: "entailment, because ", 0: "no entailment, because "}


@pytest.fixture(scope="module")
def folder(repo: Path) -> Path:
    return repo / "data" / "natural"


@pytest.fixture(scope="module")
def corpus(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Raw rows with every key (nlicot's reader keeps only the ones the trainer needs)."""
    return {s: [json.loads(line) for line in (folder / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
            for s in SPLITS}


def _all(corpus: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [row for rows in corpus.values() for row in rows]


@pytest.mark.parametrize("split", SPLITS)
def test_nlicot_reads_every_row(folder: Path, corpus, split: str) -> None:
    rows = load_rows(str(folder / f"{split}.jsonl"))
    assert [r["id"] for r in rows] == [r["id"] for r in corpus[split]]
    assert all(r["label"] in (0, 1) and r["thought_process"] for r in rows)


def test_sizes(corpus) -> None:
    assert len(_all(corpus)) >= 300
    for split, least in MIN_ROWS.items():
        assert len(corpus[split]) >= least, split


def test_schema(corpus) -> None:
    for row in _all(corpus):
        where = row.get("id")
        assert set(row) == KEYS, f"{where}: keys {sorted(row)}"
        assert re.fullmatch(r"nat-\d{4}", row["id"]), where
        assert type(row["label"]) is int and CLASSES[row["nli_class"]] == row["label"], where
        assert row["phenomenon"] in PHENOMENA and row["register"] in REGISTERS, where
        assert row["source"] == "initial", where
        for field in ("premise", "hypothesis", "thought_process"):
            assert row[field] == row[field].strip() and row[field], f"{where}: {field}"


def test_ids_unique_and_splits_disjoint_by_premise(corpus) -> None:
    ids = [row["id"] for row in _all(corpus)]
    assert len(ids) == len(set(ids))
    pairs = [(row["premise"], row["hypothesis"]) for row in _all(corpus)]
    assert len(pairs) == len(set(pairs))
    premises = {split: {row["premise"] for row in rows} for split, rows in corpus.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not premises[a] & premises[b], f"premises shared by {a} and {b}"


@pytest.mark.parametrize("split", SPLITS)
def test_labels_balanced_and_neutrals_a_third(corpus, split: str) -> None:
    rows = corpus[split]
    share = sum(row["label"] for row in rows) / len(rows)
    assert 0.45 <= share <= 0.55, f"{split}: {share:.3f} entailment"
    classes = Counter(row["nli_class"] for row in rows)
    assert classes["neutral"] * 3 >= classes["neutral"] + classes["contradiction"], f"{split}: {classes}"


def test_every_phenomenon_has_fifteen_rows(corpus) -> None:
    counts = Counter(row["phenomenon"] for row in _all(corpus))
    assert set(counts) == PHENOMENA
    assert min(counts.values()) >= 15, counts


def test_thoughts_are_three_steps_ending_in_the_label(corpus) -> None:
    for row in _all(corpus):
        thought = row["thought_process"]
        match = THOUGHT.fullmatch(thought)
        assert match and not any(re.search(r"step \d:", s) for s in match.groupdict().values()), row["id"]
        assert match["s3"].startswith(CONCLUSION[row["label"]]), row["id"]
        flags = quality(thought, row["label"])  # the pipeline's own reader of a stated verdict
        assert flags["steps"] == 3 and flags["verdict_consistent"] is True, (row["id"], flags)
        assert 25 <= flags["words"] <= 60, (row["id"], flags["words"])


def _tables(card: str) -> dict[str, dict[str, list[int]]]:
    """Each markdown table of the card whose cells after the first are all integers, keyed by its first header."""
    tables: dict[str, dict[str, list[int]]] = {}
    lines = card.splitlines()
    for i, line in enumerate(lines):
        if not (line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---")):
            continue
        header = [c.strip() for c in line.strip("|").split("|")]
        body: dict[str, list[int]] = {}
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip("|").split("|")]
            body[cells[0].strip("`")] = [int(c) for c in cells[1:]] if all(c.isdigit() for c in cells[1:]) else []
        if body and all(body.values()):
            tables[header[0]] = body
    return tables


def _class_counts(rows: list[dict[str, Any]]) -> list[int]:
    classes = Counter(row["nli_class"] for row in rows)
    return [classes["entailment"], classes["neutral"], classes["contradiction"]]


def test_data_card_counts_match_the_files(folder: Path, corpus) -> None:
    tables = _tables((folder / "README.md").read_text(encoding="utf-8"))
    everything = _all(corpus)
    splits = {**corpus, "total": everything}
    expected = {
        name: [len(rows), len({r["premise"] for r in rows}), sum(r["label"] for r in rows),
               sum(1 - r["label"] for r in rows), *_class_counts(rows)]
        for name, rows in splits.items()
    }
    assert tables["split"] == expected
    for key in ("phenomenon", "register"):
        values = {row[key] for row in everything}
        expected = {
            value: [*(sum(r[key] == value for r in corpus[s]) for s in SPLITS),
                    sum(r[key] == value for r in everything),
                    *_class_counts([r for r in everything if r[key] == value])]
            for value in values
        }
        assert tables[key] == expected, key
