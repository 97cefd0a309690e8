"""The hand-written demo corpus (data/demo) keeps the corpus contract and the thought style the model is taught.

Why: the demo config trains and evaluates on these files, and they are the example users copy; a broken row,
an unbalanced split or a thought whose conclusion disagrees with its label would teach the wrong thing quietly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

SIZES = {"train": 120, "val": 24, "test": 24}
KEYS = {"id", "premise", "hypothesis", "label", "thought_process", "source", "phenomenon"}
SOURCES = {"initial", "reflected"}
CORE_PHENOMENA = {
    "negation", "quantifiers", "numbers", "paraphrase", "hypernymy", "tense", "unrelated", "contradiction",
}
EXTRA_PHENOMENA = {"spatial", "causation", "modality", "coreference"}
THOUGHT = re.compile(r"step 1: (?P<s1>.+?) step 2: (?P<s2>.+?) step 3: (?P<s3>.+)", re.DOTALL)
CONCLUSION = {1: "entailment, because ", 0: "no entailment, because "}
MAX_TOKENS = 512  # the training limit (data.max_length)
DEMO_TOKEN_CEILING = 300  # the style guide's upper bound for a typical example


def _read(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n"), f"{path}: must end with exactly one newline"
    rows = []
    for n, line in enumerate(text.split("\n")[:-1], start=1):
        assert line.strip(), f"{path}:{n}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path}:{n}: not a JSON object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def corpus(repo: Path) -> dict[str, list[dict[str, Any]]]:
    return {split: _read(repo / "data" / "demo" / f"{split}.jsonl") for split in SIZES}


def _all(corpus: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [row for rows in corpus.values() for row in rows]


def _steps(thought: str) -> dict[str, str]:
    match = THOUGHT.fullmatch(thought)
    assert match, f"not 'step 1: … step 2: … step 3: …': {thought!r}"
    steps = match.groupdict()
    assert not any(re.search(r"step \d:", s) for s in steps.values()), f"extra step marker in {thought!r}"
    return steps


@pytest.mark.parametrize("split", SIZES)
def test_schema(corpus, split: str) -> None:
    for n, row in enumerate(corpus[split], start=1):
        where = f"{split}.jsonl:{n}"
        assert set(row) == KEYS, f"{where}: keys {sorted(row)}"
        assert row["id"] == f"demo-{split}-{n:03d}", where
        assert type(row["label"]) is int and row["label"] in (0, 1), where
        assert row["source"] in SOURCES, where
        assert row["phenomenon"] in CORE_PHENOMENA | EXTRA_PHENOMENA, where
        for field in ("premise", "hypothesis", "thought_process"):
            assert isinstance(row[field], str) and row[field] == row[field].strip() and row[field], where
        assert 8 <= len(row["premise"].split()) <= 30, f"{where}: premise length"
        assert 4 <= len(row["hypothesis"].split()) <= 15, f"{where}: hypothesis length"


@pytest.mark.parametrize("split", SIZES)
def test_size_and_exact_label_balance(corpus, split: str) -> None:
    labels = [row["label"] for row in corpus[split]]
    assert len(labels) == SIZES[split]
    assert labels.count(1) == labels.count(0) == SIZES[split] // 2


def test_ids_and_pairs_unique_across_splits(corpus) -> None:
    rows = _all(corpus)
    assert len({row["id"] for row in rows}) == len(rows)
    pairs = [(row["premise"], row["hypothesis"]) for row in rows]
    assert len(set(pairs)) == len(pairs), "a premise/hypothesis pair appears twice"


@pytest.mark.parametrize("split", SIZES)
def test_both_sources_in_every_split(corpus, split: str) -> None:
    share = sum(row["source"] == "reflected" for row in corpus[split]) / len(corpus[split])
    assert 0.1 <= share <= 0.3


def test_thoughts_have_three_steps_in_order_and_stay_concise(corpus) -> None:
    for row in _all(corpus):
        _steps(row["thought_process"])
        assert 35 <= len(row["thought_process"].split()) <= 90, row["id"]


def test_conclusion_agrees_with_label(corpus) -> None:
    for row in _all(corpus):
        conclusion = _steps(row["thought_process"])["s3"]
        assert conclusion.startswith(CONCLUSION[row["label"]]), f"{row['id']}: {conclusion!r}"
        assert ("no entailment" in conclusion) == (row["label"] == 0), row["id"]


def test_phenomena_coverage(corpus) -> None:
    assert {row["phenomenon"] for row in corpus["train"]} >= CORE_PHENOMENA | EXTRA_PHENOMENA
    for split in ("val", "test"):
        assert {row["phenomenon"] for row in corpus[split]} == CORE_PHENOMENA | EXTRA_PHENOMENA, split
    # Unrelated pairs and contradictions can never be entailed: their label must say so.
    assert all(row["label"] == 0 for row in _all(corpus) if row["phenomenon"] in {"unrelated", "contradiction"})


def test_every_example_fits_the_token_budget(corpus, tokenizer) -> None:
    from nlicot.prompt import encode_answers, encode_prompts

    rows = _all(corpus)
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    totals = {r["id"]: len(p) + len(a) for r, p, a in zip(rows, prompts, answers, strict=True)}
    assert max(totals.values()) <= MAX_TOKENS
    long = {i: n for i, n in totals.items() if n >= DEMO_TOKEN_CEILING}
    assert not long, f"examples at or over {DEMO_TOKEN_CEILING} tokens: {long}"


@pytest.mark.parametrize("split", SIZES)
def test_the_trainers_loader_accepts_the_files(repo: Path, split: str) -> None:
    from nlicot.corpus import load_rows

    rows = load_rows(str(repo / "data" / "demo" / f"{split}.jsonl"), split)
    assert len(rows) == SIZES[split]
