"""``score`` (optional): LLM-as-judge scores for every corpus thought; weak ones are rewritten and judged again.

A thought passes when coherence, correctness and brevity are all at least ``threshold``. Below it, the improve
model rewrites it from the judge's critique and the judge scores the rewrite, for at most ``max_rounds`` rounds;
the best-scored version is kept. When the budget runs out mid-loop the row keeps its best version so far.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen import answers, prompts
from data_gen.config import ApiStageConfig
from data_gen.errors import BudgetExhausted, ConfigError, RowFailed
from data_gen.results import GENERATED_FIELDS, THOUGHT_FIELDS, candidates, read_results
from data_gen.row_workflow import ApiStage, ChatRequest, Workflow, ask
from data_gen.stage_runner import run_stage
from data_gen.store import Record


@dataclass
class ScoreConfig(ApiStageConfig):
    """score (optional): LLM-as-judge scores; thoughts below the threshold are rewritten and judged again."""

    reflected: Path | None = None
    """reflect's output; its rows are scored too"""
    model: str = "mistral-small-latest"
    """judge model"""
    improve_model: str = "open-mistral-nemo"
    """model that rewrites a thought scored below the threshold"""
    threshold: int = 4
    """a thought passes when coherence, correctness and brevity are all >= this (1-5)"""
    max_rounds: int = 2
    """rewrite-and-rejudge rounds per thought"""
    max_tokens: int = 200
    """max_tokens per request; also the output bound used by the budget check"""
    expected_output_tokens: int = 80
    """typical answer length, used by --dry-run for the expected cost"""

    def check(self) -> None:
        super().check()
        if not 1 <= self.threshold <= 5 or self.max_rounds < 0:
            raise ConfigError("threshold must be in 1..5 and max_rounds >= 0")


def read_rows(cfg: ScoreConfig, counts: Counter[str] | None = None) -> list[Record]:
    """The rows build would take (repeated ids of either input counted in ``counts``)."""
    assert cfg.input is not None
    reflected = read_results(cfg.reflected, THOUGHT_FIELDS, counts=counts) if cfg.reflected else []
    rows, _ = candidates(read_results(cfg.input, GENERATED_FIELDS, purpose="score", counts=counts), reflected)
    return rows


def _rank(scores: dict[str, Any]) -> tuple[int, int]:
    """Worst criterion first, then the total: a thought is as good as its weakest aspect."""
    values = [scores[k] for k in prompts.SCORE_KEYS]
    return min(values), sum(values)


def stage(cfg: ScoreConfig) -> ApiStage:
    def request(model: str, messages: tuple[dict[str, str], ...]) -> ChatRequest:
        return ChatRequest(model, messages, cfg.max_tokens, cfg.temperature, cfg.seed)

    def workflow(row: Record) -> Workflow:
        premise, hypothesis, gold = row["premise"], row["hypothesis"], row["label"]

        def judge(thought: str) -> Any:
            scores = yield from ask(
                request(cfg.model, prompts.judge_messages(premise, hypothesis, gold, thought)),
                answers.parse_scores, cfg.max_tries, prompts.reprompt,
            )
            return {"thought_process": thought, **scores}

        history = [(yield from judge(row["thought_process"]))]  # no score at all: the row fails or stays pending
        stopped = None
        while _rank(history[-1])[0] < cfg.threshold and len(history) <= cfg.max_rounds:
            try:
                rewrite = yield from ask(
                    request(cfg.improve_model, prompts.improve_messages(premise, hypothesis, gold, history[-1]["thought_process"], history[-1])),
                    answers.parse_improvement(gold), cfg.max_tries, prompts.reprompt,
                )
                history.append((yield from judge(rewrite)))
            except BudgetExhausted:
                stopped = "budget"
                break
            except RowFailed as e:
                stopped = f"rewrite abandoned: {e}"
                break
        best = max(history, key=_rank)
        return {
            **row,
            "thought_process": best["thought_process"],
            "original_thought_process": row["thought_process"],
            "scores": {k: best[k] for k in prompts.SCORE_KEYS},
            "critique": best["critique"],
            "passed": _rank(best)[0] >= cfg.threshold,
            "rounds": len(history) - 1,
            "history": history,
            "stopped": stopped,
            "model": cfg.model,
        }

    counts: Counter[str] = Counter()
    rows = read_rows(cfg, counts)
    return ApiStage("score", rows, workflow, (cfg.model, cfg.improve_model), counts["duplicate_id"])


def main(cfg: ScoreConfig) -> int:
    return run_stage(stage(cfg), cfg)
