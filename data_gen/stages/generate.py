"""``generate``: ask the generation model for a 3-step thought and a label for every (premise, hypothesis) row."""

from __future__ import annotations

from data_gen import prompts
from data_gen.config import GenerateConfig as Config
from data_gen.errors import ConfigError, InputError
from data_gen.runner import run_stage
from data_gen.store import Record
from data_gen.workflow import ApiStage, ChatRequest, Workflow, ask
from nlicot.corpus import CorpusError, load_rows

INPUT_FIELDS = ("id", "premise", "hypothesis", "label")


def read_rows(cfg: Config) -> list[Record]:
    """The input rows (CSV or JSONL), validated by the same reader ``nlicot`` trains from."""
    unknown = sorted(set(cfg.columns) - set(INPUT_FIELDS))
    if unknown:
        raise ConfigError(f"columns: unknown field(s) {', '.join(unknown)}; map only {', '.join(INPUT_FIELDS)}")
    try:
        rows = load_rows(str(cfg.input), columns=cfg.columns, require_thought=False)
    except CorpusError as e:
        raise InputError(str(e)) from None
    return [{k: r[k] for k in INPUT_FIELDS} for r in rows]


def stage(cfg: Config) -> ApiStage:
    def workflow(row: Record) -> Workflow:
        request = ChatRequest(
            cfg.model, prompts.generation_messages(row["premise"], row["hypothesis"]), cfg.max_tokens, cfg.temperature, cfg.seed
        )
        answer = yield from ask(request, prompts.parse_generation, cfg.max_tries, prompts.reprompt)
        return {**row, **answer, "correct": answer["predicted_label"] == row["label"], "model": cfg.model}

    return ApiStage("generate", read_rows(cfg), workflow, (cfg.model,))


def main(cfg: Config) -> int:
    return run_stage(stage(cfg), cfg)
