"""``reflect``: for every generated row whose label was wrong, name the flaw and write a corrected thought."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from data_gen import answers, prompts
from data_gen.config import ApiStageConfig
from data_gen.results import GENERATED_FIELDS, read_results
from data_gen.row_workflow import ApiStage, ChatRequest, Workflow, ask
from data_gen.stage_runner import run_stage
from data_gen.store import Record


@dataclass
class ReflectConfig(ApiStageConfig):
    """reflect: a corrected thought for every generated row whose label was wrong."""

    model: str = "open-mistral-nemo"
    """model name sent to the API"""
    max_tokens: int = 400
    """max_tokens per request; also the output bound used by the budget check"""
    expected_output_tokens: int = 160
    """typical answer length, used by --dry-run for the expected cost"""


def read_rows(cfg: ReflectConfig, counts: Counter[str] | None = None) -> list[Record]:
    """generate's done rows that disagree with their gold label (repeated ids counted in ``counts``)."""
    assert cfg.input is not None
    return [
        {"id": r["id"], "premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"],
         "flawed_thought": r["thought_process"], "flawed_label": r["predicted_label"]}
        for r in read_results(cfg.input, GENERATED_FIELDS, purpose="reflect", counts=counts)
        if r["predicted_label"] != r["label"]
    ]


def stage(cfg: ReflectConfig) -> ApiStage:
    def workflow(row: Record) -> Workflow:
        messages = prompts.reflection_messages(
            row["premise"], row["hypothesis"], row["label"], row["flawed_thought"], row["flawed_label"]
        )
        request = ChatRequest(cfg.model, messages, cfg.max_tokens, cfg.temperature, cfg.seed)
        answer = yield from ask(request, answers.parse_reflection(row["label"]), cfg.max_tries, prompts.reprompt)
        return {**row, **answer, "model": cfg.model}

    counts: Counter[str] = Counter()
    rows = read_rows(cfg, counts)
    return ApiStage("reflect", rows, workflow, (cfg.model,), counts["duplicate_id"])


def main(cfg: ReflectConfig) -> int:
    return run_stage(stage(cfg), cfg)
