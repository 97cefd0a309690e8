"""``reflect``: for every generated row whose label was wrong, name the flaw and write a corrected thought."""

from __future__ import annotations

from data_gen import prompts
from data_gen.config import ReflectConfig as Config
from data_gen.corpus import GENERATED_FIELDS, read_results
from data_gen.runner import run_stage
from data_gen.store import Record
from data_gen.workflow import ApiStage, ChatRequest, Workflow, ask


def read_rows(cfg: Config) -> list[Record]:
    """generate's done rows that disagree with their gold label."""
    assert cfg.input is not None
    return [
        {"id": r["id"], "premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"],
         "flawed_thought": r["thought_process"], "flawed_label": r["predicted_label"]}
        for r in read_results(cfg.input, GENERATED_FIELDS, purpose="reflect")
        if r["predicted_label"] != r["label"]
    ]


def stage(cfg: Config) -> ApiStage:
    def workflow(row: Record) -> Workflow:
        messages = prompts.reflection_messages(
            row["premise"], row["hypothesis"], row["label"], row["flawed_thought"], row["flawed_label"]
        )
        request = ChatRequest(cfg.model, messages, cfg.max_tokens, cfg.temperature, cfg.seed)
        answer = yield from ask(request, prompts.parse_reflection(row["label"]), cfg.max_tries, prompts.reprompt)
        return {**row, **answer, "model": cfg.model}

    return ApiStage("reflect", read_rows(cfg), workflow, (cfg.model,))


def main(cfg: Config) -> int:
    return run_stage(stage(cfg), cfg)
