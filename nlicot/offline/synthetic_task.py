"""A learnable NLI task generated offline: templated pairs whose label follows from the text alone.

Why: the paid pipeline needs the Mistral API, and the hand-written demo rows are too few and too varied for a
tiny model to learn from. Here every label is decided by one visible piece of evidence (a negation, a number,
who did what to whom, a word's hypernym, a colour, a quantifier, a day), and the 3-step thought states it, so
accuracy measures whether training taught the task. The test split holds out *combinations*: every
(name, object, phenomenon) triple of a val/test row is absent from train, although each name, object and
phenomenon is seen there — a model that memorised rows cannot pass it.

Deterministic: the same :class:`SynthConfig` writes byte-identical files. :func:`pretraining_text` gives the
unlabelled premise/hypothesis text (train combinations only) that :mod:`nlicot.offline.tiny_nli` pretrains its
base on. It lives beside the models it serves, not in data_gen: only nlicot and the tests use it (``python -m
data_gen synth`` reaches it through data_gen's command table).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nlicot.atomic import atomic_write_text

NAMES = ("Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo",
         "Iris", "Jonas", "Kira", "Leo", "Maya", "Nils", "Olga", "Paul")
#: object -> its hypernym (the built-in lexicon of the hypernym phenomenon).
LEXICON = {
    "apple": "fruit", "pear": "fruit", "banana": "fruit",
    "car": "vehicle", "bike": "vehicle", "truck": "vehicle",
    "dog": "animal", "cat": "animal", "horse": "animal",
    "guitar": "instrument", "violin": "instrument", "drum": "instrument",
    "hammer": "tool", "saw": "tool",
    "shirt": "garment", "coat": "garment",
}
OBJECTS = tuple(LEXICON)
COLOURS = ("red", "blue", "green", "yellow", "black", "white")
NUMBERS = ("two", "three", "four", "five", "six", "seven")
HYPERNYM_VERBS = ("bought", "found", "sold", "drew")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
QUANTIFIERS = ("all", "some", "none", "not all")
# (premise quantifier, hypothesis quantifier) -> label, assuming the group is non-empty.
QUANTIFIER_LOGIC = {("all", "some"): 1, ("none", "not all"): 1, ("all", "none"): 0, ("all", "not all"): 0,
                    ("some", "all"): 0, ("some", "none"): 0, ("none", "some"): 0, ("none", "all"): 0}
PHENOMENA = ("negation", "number", "swap", "hypernym", "colour", "quantifier", "time")


@dataclass
class SynthConfig:
    """Settings of ``python -m data_gen synth``."""

    out_dir: Path = Path("data/synth")
    """Folder that receives train.jsonl, val.jsonl and test.jsonl."""
    train_size: int = 3000
    """Rows in train.jsonl (labels balanced within each phenomenon)."""
    val_size: int = 240
    """Rows in val.jsonl (held-out combinations, disjoint from test's)."""
    test_size: int = 420
    """Rows in test.jsonl (held-out combinations)."""
    heldout_fraction: float = 0.1
    """Share of all (name, object, phenomenon) triples held out for val, and again for test."""
    seed: int = 13
    """Seed of everything: the same config writes the same bytes."""
    phenomena: list[str] = field(default_factory=lambda: list(PHENOMENA))
    """Phenomena to generate (a subset of negation, number, swap, hypernym, colour, quantifier, time)."""


@dataclass(frozen=True)
class Pair:
    """One generated example before it gets an id."""

    premise: str
    hypothesis: str
    label: int
    thought: str
    phenomenon: str
    name: str
    obj: str


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(word: str) -> str:
    return {"fruit": "fruit", "coat": "coats"}.get(word, word + ("es" if word.endswith("sh") else "s"))


def _thought(steps: tuple[str, str, str], label: int) -> str:
    """The 3-step thought: each step one short clause, the comparison and the verdict last."""
    s1, s2, s3 = steps
    verdict = "entailment" if label else "no entailment"
    return f"step 1: {s1[0].upper() + s1[1:]}. step 2: {s2[0].upper() + s2[1:]}. step 3: {s3}, so {verdict}."


Example = tuple[str, str, tuple[str, str, str]]  # premise, hypothesis, the thought's three steps


def _negation(rng: random.Random, name: str, obj: str, label: int) -> Example:
    colour = rng.choice(COLOURS)
    coloured = _a(colour + " " + obj)
    if rng.random() < 0.5:  # positive premise: dropping the colour is entailed, negating it is not
        p, said = f"{name} has {coloured}.", f"the premise says {name} has {coloured}"
        if label:
            return p, f"{name} has {_a(obj)}.", (said, "the hypothesis only drops the colour", "it still holds")
        return p, f"{name} does not have {coloured}.", (said, "the hypothesis negates it", "it contradicts the premise")
    p, said = f"{name} does not have {_a(obj)}.", f"the premise says {name} has no {obj}"  # narrowing is entailed
    if label:
        return p, f"{name} does not have {coloured}.", (said, f"the hypothesis denies {coloured}",
                                                       f"no {obj} means no {colour} {obj}")
    return p, f"{name} has {_a(obj)}.", (said, f"the hypothesis says {name} has {_a(obj)}", "it contradicts the premise")


def _number(rng: random.Random, name: str, obj: str, label: int) -> Example:
    n = rng.randrange(1, len(NUMBERS))
    k = rng.randrange(0, n + 1) if label else rng.randrange(n + 1, len(NUMBERS)) if n + 1 < len(NUMBERS) else None
    if k is None:  # the largest number has nothing above it: flip to a smaller premise
        n, k = rng.randrange(0, len(NUMBERS) - 1), len(NUMBERS) - 1
    have, need = NUMBERS[n], NUMBERS[k]
    return (f"{name} has {have} {_plural(obj)}.", f"{name} has at least {need} {_plural(obj)}.",
            (f"the premise has {have} {_plural(obj)}", f"the hypothesis needs at least {need}",
             f"{have} is {'not ' if label else ''}fewer than {need}"))


def _compared(a: str, b: str, label: int) -> str:
    """Step 3 of the phenomena decided by one equality: "a is b" / "a is not b".

    The verdict ("is" / "is not") comes right after the premise's value and before the hypothesis's is written,
    as in the number phenomenon's "two is fewer than seven": measured on the tiny base, "a and b are the same X"
    (verdict after both values) left colours and days at chance, this order lifts them to ~1.0
    (benchmarks/README.md, "Learning")."""
    return f"{a} is {'' if label else 'not '}{b}"


def _swap(rng: random.Random, name: str, obj: str, label: int) -> Example:
    other = rng.choice([n for n in NAMES if n != name])
    h, giver = (f"{other} got the {obj} from {name}.", name) if label else (f"{name} got the {obj} from {other}.", other)
    return (f"{name} gave {other} the {obj}.", h,
            (f"the premise makes {name} the giver", f"the hypothesis makes {giver} the giver",
             _compared(name, giver, label)))


def _hypernym(rng: random.Random, name: str, obj: str, label: int) -> Example:
    # Step 1 looks the premise's word up in the lexicon (an object's kind, or "a whole kind" for a hypernym), so
    # that step 3 is one equality of two kinds, written like the other equality phenomena.
    hyper, verb = LEXICON[obj], rng.choice(HYPERNYM_VERBS)
    kind = f", {_a(hyper)}"
    if label:
        said, heard, why = obj, hyper, _compared(_a(hyper), _a(hyper), label)
    elif rng.random() < 0.5:  # the reverse direction: the general word does not give the specific one
        said, heard, why, kind = hyper, obj, f"{_a(hyper)} need not be {_a(obj)}", ", a whole kind"
    else:
        wrong = rng.choice(sorted({h for h in LEXICON.values() if h != hyper}))
        said, heard, why = obj, wrong, _compared(_a(hyper), _a(wrong), label)
    return (f"{name} {verb} {_a(said)}.", f"{name} {verb} {_a(heard)}.",
            (f"the premise names {_a(said)}{kind}", f"the hypothesis names {_a(heard)}", why))


def _same_or_other(rng: random.Random, values: Sequence[str], label: int) -> tuple[str, str]:
    """A value for the premise and, for the hypothesis, the same one (label 1) or a different one (label 0)."""
    value = rng.choice(values)
    return value, value if label else rng.choice([v for v in values if v != value])


def _colour(rng: random.Random, name: str, obj: str, label: int) -> Example:
    colour, other = _same_or_other(rng, COLOURS, label)
    return (f"{name} has {_a(colour + ' ' + obj)}.", f"The {obj} that {name} has is {other}.",
            (f"the premise says the {obj} is {colour}", f"the hypothesis says it is {other}",
             _compared(colour, other, label)))


def _quantifier(rng: random.Random, name: str, obj: str, label: int) -> Example:
    qp, qh = rng.choice(sorted(k for k, v in QUANTIFIER_LOGIC.items() if v == label))
    colour = rng.choice(COLOURS)

    def say(q: str) -> str:
        verb = "is" if q == "none" else "are"
        return f"{q.capitalize()} of the {_plural(obj)} of {name} {verb} {colour}."

    return (say(qp), say(qh), (f"the premise says {qp}", f"the hypothesis says {qh}",
                               f"{qp} {'implies' if label else 'does not imply'} {qh}"))


def _time(rng: random.Random, name: str, obj: str, label: int) -> Example:
    day, other = _same_or_other(rng, DAYS, label)
    return (f"{name} washed the {obj} on {day}.", f"On {other}, {name} washed the {obj}.",
            (f"the premise says it was on {day}", f"the hypothesis says on {other}",
             _compared(day, other, label)))


MAKERS: dict[str, Callable[[random.Random, str, str, int], Example]] = {
    "negation": _negation, "number": _number, "swap": _swap, "hypernym": _hypernym,
    "colour": _colour, "quantifier": _quantifier, "time": _time,
}


def make_pair(rng: random.Random, phenomenon: str, name: str, obj: str, label: int) -> Pair:
    """One example of ``phenomenon`` about ``name`` and ``obj`` with the requested label."""
    premise, hypothesis, steps = MAKERS[phenomenon](rng, name, obj, label)
    return Pair(premise, hypothesis, label, _thought(steps, label), phenomenon, name, obj)


def split_triples(cfg: SynthConfig) -> dict[str, list[tuple[str, str, str]]]:
    """All (name, object, phenomenon) triples, partitioned into train / val / test."""
    triples = [(n, o, p) for p in cfg.phenomena for n in NAMES for o in OBJECTS]
    rng = random.Random(f"{cfg.seed}-triples")
    rng.shuffle(triples)
    k = max(1, round(cfg.heldout_fraction * len(triples)))
    return {"val": sorted(triples[:k]), "test": sorted(triples[k:2 * k]), "train": sorted(triples[2 * k:])}


def _rows(cfg: SynthConfig, split: str, triples: list[tuple[str, str, str]], size: int,
          taken: set[tuple[str, str]]) -> list[dict]:
    """``size`` rows from ``triples``: labels alternate per phenomenon (balanced), no pair seen before."""
    rng = random.Random(f"{cfg.seed}-{split}")
    by_phenomenon = {p: [t for t in triples if t[2] == p] for p in cfg.phenomena}
    rows: list[dict] = []
    attempts = 0
    while len(rows) < size:
        attempts += 1
        if attempts > 100 * size:
            raise ValueError(f"synth: cannot make {size} distinct {split} rows; lower the size or add phenomena")
        phenomenon = cfg.phenomena[len(rows) % len(cfg.phenomena)]
        label = (len(rows) // len(cfg.phenomena)) % 2
        name, obj, _ = rng.choice(by_phenomenon[phenomenon])
        pair = make_pair(rng, phenomenon, name, obj, label)
        key = (pair.premise, pair.hypothesis)
        if key in taken:
            continue
        taken.add(key)
        rows.append({"id": f"synth-{split}-{len(rows) + 1:05d}", "premise": pair.premise,
                     "hypothesis": pair.hypothesis, "label": pair.label, "thought_process": pair.thought,
                     "source": "synthetic", "phenomenon": phenomenon, "name": name, "object": obj})
    return rows


def generate(cfg: SynthConfig) -> dict[str, list[dict]]:
    """The three splits as lists of corpus rows (no file is written)."""
    unknown = sorted(set(cfg.phenomena) - set(PHENOMENA))
    if unknown or not cfg.phenomena:
        raise ValueError(f"synth: unknown phenomena {unknown} (choose from {', '.join(PHENOMENA)})")
    triples = split_triples(cfg)
    taken: set[tuple[str, str]] = set()
    # test and val first, so that train (the largest) is the split that skips an already-used pair
    out = {s: _rows(cfg, s, triples[s], n, taken)
           for s, n in (("test", cfg.test_size), ("val", cfg.val_size), ("train", cfg.train_size))}
    return {s: out[s] for s in ("train", "val", "test")}


def pretraining_text(cfg: SynthConfig, size: int, seed: int) -> Iterator[str]:
    """Unlabelled documents from the *train* combinations only: no label, no thought, no verdict word.

    A document is one or two ``Premise: …\nHypothesis: …`` pairs followed by one or two of its own sentences
    repeated verbatim, each on its own line. The repeats teach the base to copy a whole earlier sentence (the
    skill a real pretrained model brings and the thought's restating steps need); both labels are drawn for every
    phenomenon, so the text itself says nothing about which pairs entail.
    """
    rng = random.Random(f"{cfg.seed}-pretrain-{seed}")
    train = split_triples(cfg)["train"]
    for _ in range(size):
        lines: list[str] = []
        sentences: list[str] = []
        for _ in range(rng.randint(1, 2)):
            name, obj, phenomenon = rng.choice(train)
            pair = make_pair(rng, phenomenon, name, obj, rng.randrange(2))
            lines += [f"Premise: {pair.premise}", f"Hypothesis: {pair.hypothesis}"]
            sentences += [pair.premise, pair.hypothesis]
        lines += [rng.choice(sentences) for _ in range(rng.randint(1, 2))]
        yield "\n".join(lines)


def shuffle_labels(rows: list[dict], seed: int = 0) -> list[dict]:
    """The control corpus: (label, thought) pairs permuted among the rows of each phenomenon.

    The thought moves with its label, so it stays consistent with the label but no longer with the premise:
    nothing left in a row tells its label, and a model trained on it must stay at chance.
    """
    rng = random.Random(seed)
    out = [dict(r) for r in rows]
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(out):
        by_kind.setdefault(r["phenomenon"], []).append(i)
    for idx in by_kind.values():
        moved = [(out[i]["label"], out[i]["thought_process"]) for i in idx]
        rng.shuffle(moved)
        for i, (label, thought) in zip(idx, moved, strict=True):
            out[i]["label"], out[i]["thought_process"] = label, thought
    return out


def run(cfg: SynthConfig) -> int:
    """Write ``out_dir/{train,val,test}.jsonl`` (each atomically); 0 on success, 2 on a bad config."""
    try:
        splits = generate(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # data_gen's usage / config error status
    out = Path(cfg.out_dir)
    for split, rows in splits.items():
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        ones = sum(r["label"] for r in rows)
        print(f"{out / f'{split}.jsonl'}: {len(rows)} rows, {ones} entailment / {len(rows) - ones} not")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(SynthConfig()))
