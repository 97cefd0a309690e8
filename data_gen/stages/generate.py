"""``generate``: ask the generation model for a 3-step thought and a label for every (premise, hypothesis) row."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from data_gen import answers, prompts
from data_gen.config import ApiStageConfig
from data_gen.errors import ConfigError, InputError
from data_gen.runner import run_stage
from data_gen.store import Record
from data_gen.workflow import ApiStage, ChatRequest, Workflow, ask
from nlicot.corpus import CorpusError, load_rows

log = logging.getLogger(__name__)
INPUT_FIELDS = ("id", "premise", "hypothesis", "label")


@dataclass
class GenerateConfig(ApiStageConfig):
    """generate: one 3-step thought and a label per input row (CSV or JSONL)."""

    columns: dict[str, str] = field(default_factory=dict)
    """map our field names (id, premise, hypothesis, label) to the input's columns"""


def read_rows(cfg: GenerateConfig) -> list[Record]:
    """The input rows (CSV or JSONL), validated by the same reader ``nlicot`` trains from.

    Without an ``id`` column a row's id is a content hash of its (premise, hypothesis) (``nlicot.corpus.pair_id``),
    so a renamed or reordered input resumes onto the results already paid for. A pair that occurs more than once is
    asked about once; the repeats are named in the log.
    """
    unknown = sorted(set(cfg.columns) - set(INPUT_FIELDS))
    if unknown:
        raise ConfigError(f"columns: unknown field(s) {', '.join(unknown)}; map only {', '.join(INPUT_FIELDS)}")
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
