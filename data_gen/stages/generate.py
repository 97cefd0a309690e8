"""``generate``: ask the generation model for a 3-step thought and a label for every (premise, hypothesis) row."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from data_gen import answers, prompts
from data_gen.config import ApiStageConfig
from data_gen.errors import ConfigError, InputError
from data_gen.row_workflow import ApiStage, ChatRequest, Workflow, ask
from data_gen.stage_runner import run_stage
from data_gen.store import Record
from nlicot.corpus import CorpusError, load_rows

log = logging.getLogger(__name__)
INPUT_FIELDS = ("id", "premise", "hypothesis", "label")
REQUIRED_FIELDS = INPUT_FIELDS[1:]  # without an id column, ids are content hashes


@dataclass
class GenerateConfig(ApiStageConfig):
    """generate: one 3-step thought and a label per input row (CSV or JSONL)."""

    columns: dict[str, str] = field(default_factory=dict)
    """map our field names (id, premise, hypothesis, label) to the input's columns"""


def _check_columns(path: Path, columns: dict[str, str]) -> None:
    """One error for the whole file, not one per row: a directory, or a CSV / JSONL without a column it needs."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a CSV or JSONL file")
    if path.suffix not in (".csv", ".jsonl") or not path.is_file():
        return  # a missing file or another source: the reader names the problem
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        if path.suffix == ".csv":
            header = next(csv.reader(f), [])
        else:
            first = next((line for line in f if line.strip()), "{}")
            try:
                record = json.loads(first)
            except json.JSONDecodeError:
                return  # the reader names the bad line
            header = list(record) if isinstance(record, dict) else []
    missing = [(name, columns.get(name, name)) for name in REQUIRED_FIELDS if columns.get(name, name) not in header]
    if missing and header:
        shown = ", ".join(f"{col!r}" + (f" (for {name})" if col != name else "") for name, col in missing)
        raise InputError(f"{path}: no {shown} column; its columns are {', '.join(map(repr, header))} "
                         f"(map others with columns: {{label: <column>}})")


def read_rows(cfg: GenerateConfig) -> list[Record]:
    """The input rows (CSV or JSONL), validated by the same reader ``nlicot`` trains from.

    Without an ``id`` column a row's id is a content hash of its (premise, hypothesis) (``nlicot.corpus.pair_id``),
    so a renamed or reordered input resumes onto the results already paid for. A pair that occurs more than once is
    asked about once; the repeats are named in the log.
    """
    unknown = sorted(set(cfg.columns) - set(INPUT_FIELDS))
    if unknown:
        raise ConfigError(f"columns: unknown field(s) {', '.join(unknown)}; map only {', '.join(INPUT_FIELDS)}")
    _check_columns(Path(str(cfg.input)), cfg.columns)
    try:
        rows = load_rows(str(cfg.input), columns=cfg.columns, require_thought=False, content_ids=True)
    except CorpusError as e:
        raise InputError(str(e)) from None
    repeats = [f"{where} (same pair as {r['where']})" for r in rows for where in r.get("also_at", [])]
    if repeats:
        shown = "; ".join(repeats[:5]) + (f"; … {len(repeats) - 5} more" if len(repeats) > 5 else "")
        log.warning("%s: %d duplicate pair(s) kept once: %s", cfg.input, len(repeats), shown)
    return [{k: r[k] for k in INPUT_FIELDS} for r in rows]


def stage(cfg: GenerateConfig) -> ApiStage:
    def workflow(row: Record) -> Workflow:
        request = ChatRequest(
            cfg.model, prompts.generation_messages(row["premise"], row["hypothesis"]), cfg.max_tokens, cfg.temperature, cfg.seed
        )
        answer = yield from ask(request, answers.parse_generation, cfg.max_tries, prompts.reprompt)
        return {**row, **answer, "correct": answer["predicted_label"] == row["label"], "model": cfg.model}

    return ApiStage("generate", read_rows(cfg), workflow, (cfg.model,))


def main(cfg: GenerateConfig) -> int:
    return run_stage(stage(cfg), cfg)
