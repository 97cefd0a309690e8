"""The synthetic NLI task: deterministic, balanced, held-out combinations really unseen, labels that follow from
the text (checked by rules written here from the sentences, not by the generator's own tables), and thoughts
that name the decisive evidence."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from nlicot.corpus import load_rows
from nlicot.offline import synthetic_task as synth

SMALL = {"train_size": 700, "val_size": 140, "test_size": 140}


@pytest.fixture(scope="module")
def splits():
    return synth.generate(synth.SynthConfig(**SMALL))


def test_same_config_writes_the_same_bytes_and_valid_corpus_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert synth.run(synth.SynthConfig(out_dir=a, **SMALL)) == 0
    assert synth.run(synth.SynthConfig(out_dir=b, **SMALL)) == 0
    for split in ("train", "val", "test"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
        rows = load_rows(str(a / f"{split}.jsonl"), split=split, require_thought=True)
        assert len(rows) == SMALL[f"{split}_size"]
    other = synth.generate(synth.SynthConfig(seed=14, **SMALL))
    assert other["train"] != synth.generate(synth.SynthConfig(**SMALL))["train"]


def test_labels_are_balanced_within_every_phenomenon(splits):
    for split, rows in splits.items():
        counts = Counter((r["phenomenon"], r["label"]) for r in rows)
        for phenomenon in synth.PHENOMENA:
            ones, zeros = counts[(phenomenon, 1)], counts[(phenomenon, 0)]
            assert ones + zeros > 0, (split, phenomenon)
            assert abs(ones - zeros) <= 1, (split, phenomenon, ones, zeros)


def test_heldout_combinations_are_unseen_in_train_but_their_parts_are_seen(splits):
    def triples(rows):
        return {(r["name"], r["object"], r["phenomenon"]) for r in rows}

    train = triples(splits["train"])
    for split in ("val", "test"):
        held = triples(splits[split])
        assert held and not held & train
        # names and objects appear in the premise text of train rows, not just in the metadata
        train_text = " ".join(r["premise"] for r in splits["train"])
        for name, obj, _ in held:
            assert re.search(rf"\b{name}\b", train_text) and re.search(rf"\b{obj}", train_text)
    assert not triples(splits["val"]) & triples(splits["test"])
    pairs = [{(r["premise"], r["hypothesis"]) for r in rows} for rows in splits.values()]
    assert not pairs[0] & pairs[1] and not pairs[0] & pairs[2] and not pairs[1] & pairs[2]


def _rule_label(row: dict) -> int:
    """The label read off the sentences with rules of this test (independent of the generator's code)."""
    p, h = row["premise"], row["hypothesis"]
    kind = row["phenomenon"]
    def words(s: str) -> list[str]:
        return re.findall(r"[A-Za-z]+", s.lower())

    if kind in ("colour", "time"):
        vocab = synth.COLOURS if kind == "colour" else [d.lower() for d in synth.DAYS]
        return int([w for w in words(p) if w in vocab] == [w for w in words(h) if w in vocab])
    if kind == "number":
        n = [synth.NUMBERS.index(w) for w in words(p) if w in synth.NUMBERS]
        k = [synth.NUMBERS.index(w) for w in words(h) if w in synth.NUMBERS]
        return int(k[0] <= n[0])
    if kind == "swap":  # "A gave B the x." entails "B got the x from A." only
        giver, receiver = re.match(r"(\w+) gave (\w+) ", p).groups()
        return int(h.startswith(f"{receiver} got") and h.rstrip(".").endswith(f"from {giver}"))
    if kind == "negation":
        neg_p, neg_h = "not" in words(p), "not" in words(h)
        if neg_p != neg_h:
            return 0
        # same polarity: the positive side may only drop a word, the negative side may only add one
        short, long_ = (h, p) if not neg_p else (p, h)
        return int(set(words(short)) - {"a", "an"} <= set(words(long_)))
    if kind == "hypernym":
        hyponym_of = {"fruit": {"apple", "pear", "banana"}, "vehicle": {"car", "bike", "truck"},
                      "animal": {"dog", "cat", "horse"}, "instrument": {"guitar", "violin", "drum"},
                      "tool": {"hammer", "saw"}, "garment": {"shirt", "coat"}}
        noun_p, noun_h = words(p)[-1], words(h)[-1]
        return int(noun_p in hyponym_of.get(noun_h, ()))
    if kind == "quantifier":
        def q(s: str) -> str:
            return "not all" if s.lower().startswith("not all") else words(s)[0]

        return int((q(p), q(h)) in {("all", "some"), ("none", "not all")})
    raise AssertionError(kind)


def test_every_label_follows_from_the_text(splits):
    for rows in splits.values():
        for row in rows:
            assert row["label"] == _rule_label(row), row


def test_thoughts_have_three_steps_and_state_the_decisive_evidence(splits):
    for row in splits["train"]:
        t = row["thought_process"]
        m = re.fullmatch(r"step 1: (.+)\. step 2: (.+)\. step 3: (.+), so (entailment|no entailment)\.", t)
        assert m, t
        s1, s2, s3, verdict = (g.lower() for g in m.groups())
        assert verdict == ("entailment" if row["label"] else "no entailment"), t
        p, h = row["premise"].lower(), row["hypothesis"].lower()
        kind = row["phenomenon"]
        if kind in ("colour", "time", "number"):  # step 1 names the premise's value, step 2 the hypothesis's
            vocab = {"colour": synth.COLOURS, "time": [d.lower() for d in synth.DAYS], "number": synth.NUMBERS}[kind]
            in_p = [w for w in vocab if re.search(rf"\b{w}\b", p)]
            in_h = [w for w in vocab if re.search(rf"\b{w}\b", h)]
            assert [w for w in vocab if re.search(rf"\b{w}\b", s1)] == in_p, t
            assert [w for w in vocab if re.search(rf"\b{w}\b", s2)] == in_h, t
            assert set(re.findall(r"\w+", s3)) >= set(in_p + in_h), t  # step 3 compares the two
        elif kind == "swap":  # the giver is the name after "gave" in the premise and after "from" in the hypothesis
            giver_h = h.split(" from ")[1].rstrip(".") if " from " in h else None
            assert p.split()[0] in s1 and "giver" in s1 and giver_h in s2, t
        elif kind == "hypernym":
            assert p.split()[-1].rstrip(".") in s1 and h.split()[-1].rstrip(".") in s2, t
        elif kind == "quantifier":
            assert s1.endswith(p.split(" of ")[0]) and s2.endswith(h.split(" of ")[0]), t
        elif kind == "negation":
            assert ("negat" in s2 or "colour" in s2 or "denies" in s2 or "has" in s2), t
        assert len(t.split()) <= 40, t  # short: the thought is paid for in every training and generation step


def test_pretraining_text_has_no_labels_or_thoughts_and_only_train_combinations():
    cfg = synth.SynthConfig(**SMALL)
    texts = list(synth.pretraining_text(cfg, 300, seed=0))
    assert len(set(texts)) > 200
    train = {(n, o) for n, o, p in synth.split_triples(cfg)["train"]}
    held = {(n, o, p) for s in ("val", "test") for n, o, p in synth.split_triples(cfg)[s]}
    assert held
    repeats = 0
    for text in texts:
        assert re.fullmatch(r"(Premise: [^\n]+\nHypothesis: [^\n]+\n){1,2}[^\n]+(\n[^\n]+)?", text), text
        lines = text.split("\n")
        stated = {line.split(": ", 1)[1] for line in lines if line.startswith(("Premise: ", "Hypothesis: "))}
        tail = [line for line in lines if not line.startswith(("Premise: ", "Hypothesis: "))]
        assert tail and set(tail) <= stated, text  # the repeats are verbatim copies of the document's sentences
        repeats += len(tail)
        assert not re.search(r"entail|step \d|because|label", text, re.IGNORECASE), text
        names = [n for n in synth.NAMES if re.search(rf"\b{n}\b", text)]
        objects = [o for o in synth.OBJECTS if re.search(rf"\b{o}", text)]
        assert any((n, o) in train for n in names for o in objects), text
    assert repeats >= len(texts)


def test_bad_config_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert synth.run(synth.SynthConfig(out_dir=out, phenomena=["negation", "sarcasm"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sarcasm" in err and err.count("\n") == 1
    assert not out.exists()


def test_committed_files_are_what_the_default_config_writes(tmp_path):
    """data/synth/ is committed; it must stay the generator's output, not a hand-edited copy."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1] / "data" / "synth"
    assert synth.run(synth.SynthConfig(out_dir=tmp_path)) == 0
    for split in ("train", "val", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (repo / f"{split}.jsonl").read_bytes(), split
        first = json.loads((repo / f"{split}.jsonl").read_text().splitlines()[0])
        assert first["source"] == "synthetic"


def test_shuffled_control_keeps_thought_with_label_and_breaks_the_signal(splits):
    rows = splits["train"]
    shuffled = synth.shuffle_labels(rows, seed=0)
    assert [r["premise"] for r in shuffled] == [r["premise"] for r in rows]
    assert Counter((r["phenomenon"], r["label"]) for r in shuffled) == Counter((r["phenomenon"], r["label"]) for r in rows)
    for r in shuffled:  # the verdict in step 3 still matches the (new) label
        assert r["thought_process"].endswith(", so entailment." if r["label"] else ", so no entailment.")
    agree = sum(a["label"] == b["label"] for a, b in zip(rows, shuffled, strict=True)) / len(rows)
    assert 0.4 <= agree <= 0.6, agree
    assert sum(_rule_label(r) == r["label"] for r in shuffled) / len(rows) <= 0.6
