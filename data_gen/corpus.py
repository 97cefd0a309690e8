"""Reading stage outputs back, and choosing the one thought each row contributes to the corpus.

A row enters the corpus with its ``initial`` thought when the generation model got the label right, with its
``reflected`` thought when it got it wrong and reflection produced a corrected one, and not at all otherwise.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_gen.errors import InputError
from data_gen.store import Record, missing_results, read_jsonl

MAX_REPORTED = 20
THOUGHT_FIELDS = {"id": str, "premise": str, "hypothesis": str, "label": int, "thought_process": str}
GENERATED_FIELDS = {**THOUGHT_FIELDS, "predicted_label": int}


def _valid(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value in (0, 1)
    return isinstance(value, str) and bool(value.strip())


def read_results(path: Path, fields: dict[str, type], purpose: str = "read") -> list[Record]:
    """A stage's done rows, every missing or malformed field reported at once as ``file:line: …``."""
    if not path.is_file():
        raise InputError(missing_results(path, purpose))
    rows: list[Record] = []
    problems: list[str] = []
    for n, rec in read_jsonl(path):
        bad = [k for k, kind in fields.items() if not _valid(rec.get(k), kind)]
        if bad:
            problems.append(f"{path}:{n}: missing or invalid {', '.join(bad)}")
            if len(problems) >= MAX_REPORTED:
                break
        else:
            rows.append(rec)
    if problems:
        raise InputError(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(problems))
    return rows


def candidates(thoughts: list[Record], reflected: list[Record]) -> tuple[list[Record], Counter[str]]:
    """One corpus row per generated row that has a thought reaching its gold label, and the counts of why not."""
    fixed = {r["id"]: r for r in reflected}
    rows: list[Record] = []
    counts: Counter[str] = Counter()
    for t in thoughts:
        if t["predicted_label"] == t["label"]:
            source, thought = "initial", t["thought_process"]
        elif t["id"] in fixed:
            source, thought = "reflected", fixed[t["id"]]["thought_process"]
        else:
            counts["wrong_without_reflection"] += 1
            continue
        counts[source] += 1
        rows.append(
            {"id": t["id"], "premise": t["premise"], "hypothesis": t["hypothesis"], "label": t["label"],
             "thought_process": thought, "source": source}
        )
    return rows, counts
