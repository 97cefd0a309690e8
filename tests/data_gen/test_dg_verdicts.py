"""The verdict reader behind build's quality filter, on conclusions written by hand (fixtures/verdicts.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml

from data_gen import answers

CASES = yaml.safe_load((Path(__file__).parent / "fixtures" / "verdicts.yaml").read_text(encoding="utf-8"))


def test_the_fixture_is_varied_and_labelled():
    assert len(CASES) >= 80
    assert {c["verdict"] for c in CASES} == {0, 1, None}
    assert all(set(c) == {"verdict", "text"} for c in CASES)


def test_verdicts_are_read_right_and_a_negation_is_never_read_as_its_opposite():
    got = [(c, answers.verdict_of(c["text"])) for c in CASES]
    wrong = [(c["text"], c["verdict"], v) for c, v in got if v != c["verdict"]]
    opposite = [w for w in wrong if None not in w[1:]]
    assert opposite == []
    assert len(wrong) <= 0.03 * len(CASES), wrong


def test_the_conclusion_decides_not_the_first_verdict_like_phrase():
    """The three readings issue 21 found wrong (the old reader let the first 30 characters decide)."""
    assert answers.verdict_of("Little of the hypothesis is supported by the premise, so the hypothesis is not entailed "
                              "and the predicted label is 0.") == 0
    assert answers.verdict_of("Since nothing in the premise contradicts it and it is directly stated, the hypothesis is "
                              "entailed.") == 1
    assert answers.verdict_of("Only part of the hypothesis is supported by the premise, so it does not follow.") == 0


def test_cues_that_disagree_in_the_conclusion_are_uncertain():
    assert answers.verdict_of("So the hypothesis is entailed and there is no entailment.") is None
    thought = "step 1: A dog runs. step 2: The hypothesis says a dog sleeps. step 3: it follows, but it does not follow."
    flags = answers.quality(thought, 1)
    assert flags["verdict_consistent"] is None and flags["verdict_uncertain"] is True  # kept, counted as uncertain
