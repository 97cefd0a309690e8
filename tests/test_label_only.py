"""Label-only rows: the corpus format accepts a row without a thought (and only such a row), the data module counts
them per split, SFT never trains on one, GRPO samples from them, and ``data.thought_fraction`` makes a seeded,
nested label-only share of a corpus that has every thought."""

from __future__ import annotations

import json

import pytest

from nlicot.corpus import CorpusError, load_rows
from nlicot.data import NLICoTDataModule, thought_subset
from nlicot.grpo import GRPODataModule

PAIR = {"premise": "A dog runs.", "hypothesis": "An animal runs.", "label": 1}
THOUGHT = "step 1: a dog runs. step 2: a dog is an animal. step 3: entailment, because dogs are animals."


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLICOT_CACHE", str(tmp_path / "cache"))


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_row_without_a_thought_is_label_only_and_other_broken_rows_still_fail(tmp_path) -> None:
    good = write(tmp_path / "a.jsonl", [{**PAIR, "id": "t", "thought_process": THOUGHT, "source": "initial"},
                                        {**PAIR, "id": "l1"}, {**PAIR, "id": "l2", "thought_process": None,
                                                               "source": "label_only"},
                                        {**PAIR, "id": "l3", "thought_process": ""}])
    rows = load_rows(good, label_only=True)
    assert [(r["id"], r["source"], r["thought_process"] is None) for r in rows] == [
        ("t", "initial", False), ("l1", "label_only", True), ("l2", "label_only", True), ("l3", "label_only", True)]
    with pytest.raises(CorpusError, match=r"a.jsonl:2: field 'thought_process' must be a non-empty string"):
        load_rows(good)  # without label_only (the default), a missing thought is still a problem
    bad = write(tmp_path / "b.jsonl", [{**PAIR, "id": "x", "source": "reflected"},
                                       {**PAIR, "id": "y", "thought_process": THOUGHT, "source": "label_only"},
                                       {**PAIR, "id": "z", "thought_process": "   "},
                                       {"premise": "A.", "hypothesis": "B.", "id": "w"}])
    with pytest.raises(CorpusError) as err:
        load_rows(bad, label_only=True)
    text = str(err.value)
    assert "4 problem(s)" in text
    assert "b.jsonl:1: field 'thought_process' is missing but source is 'reflected'" in text  # a paid row lost it
    assert "b.jsonl:2: source is 'label_only' but the row has a 'thought_process'" in text
    assert "b.jsonl:3: field 'thought_process' must be a non-empty string" in text
    assert "b.jsonl:4: field 'label' must be 0 or 1, got None" in text  # a label-only row needs its label


def test_thought_subset_is_seeded_exact_and_nested() -> None:
    rows = [{"id": f"r{i}", "thought_process": "t"} for i in range(200)] + [{"id": "lab", "thought_process": None}]
    ten, quarter = thought_subset(rows, 0.1, seed=0), thought_subset(rows, 0.25, seed=0)
    assert len(ten) == 20 and len(quarter) == 50 and ten < quarter and "lab" not in quarter
    assert thought_subset(list(reversed(rows)), 0.1, seed=0) == ten  # the file order does not choose
    assert thought_subset(rows, 0.1, seed=1) != ten


def test_sft_drops_label_only_rows_and_grpo_samples_from_them(repo, cache) -> None:
    paths = dict(train_path=str(repo / "data/demo/train.jsonl"), val_path=str(repo / "data/demo/val.jsonl"))
    sft = NLICoTDataModule(**paths, thought_fraction=0.25)
    sft.setup("fit")
    s = sft.stats()["train"]
    assert s["rows_read"] == 120 and s["thoughts"] == {"with_thought": 30, "label_only": 90}
    assert s["examples"] == 30 and s["dropped"] == {"over_max_length": 0, "label_only": 90}
    assert min(s["tokens"]["thought"].values()) > 0  # every SFT example has its thought
    assert sft.stats()["val"]["thoughts"] == {"with_thought": 24, "label_only": 0}  # val keeps every thought
    sft_ids = set(sft.splits["train"].examples["id"])

    grpo = GRPODataModule(**paths, thought_fraction=0.25, packing=False, prompts="label_only")
    grpo.setup("fit")
    g = grpo.stats()["train"]
    assert g["examples"] == 90 and g["dropped"] == {"over_max_length": 0, "with_thought": 30}
    grpo_ids = set(grpo.splits["train"].examples["id"])
    assert not grpo_ids & sft_ids and len(grpo_ids | sft_ids) == 120  # the other 75 %, exactly
    assert set(grpo.splits["train"].examples["source"]) == {"label_only"}
    assert all(len(a) == 0 for a in grpo.splits["train"].examples["answer_ids"])
    (batch, *_) = grpo.train_dataloader()
    assert {r["id"] for r in batch} <= grpo_ids and all(r["label"] in (0, 1) and r["prompt_ids"] for r in batch)

    every = GRPODataModule(**paths, thought_fraction=0.25, packing=False)
    every.setup("fit")
    assert every.stats()["train"]["examples"] == 120  # GRPO's default: every row, it needs only the label


def test_sft_on_label_only_rows_alone_or_a_bad_fraction_is_one_error(repo, cache, tmp_path) -> None:
    labels = write(tmp_path / "labels.jsonl", [{**PAIR, "id": f"l{i}"} for i in range(3)])
    with pytest.raises(CorpusError, match=r"labels.jsonl: no rows with a thought_process \(of 3 read"):
        NLICoTDataModule(train_path=labels).setup("fit")
    with pytest.raises(CorpusError, match=r"data.thought_fraction=1.5 must be in \[0, 1\]"):
        NLICoTDataModule(train_path=str(repo / "data/demo/train.jsonl"), thought_fraction=1.5).setup("fit")
