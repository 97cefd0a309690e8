"""``score`` (optional): LLM-as-judge scores for every corpus thought; weak ones are rewritten and judged again.

A thought passes when coherence, correctness and brevity are all at least ``threshold``. Below it, the improve
model rewrites it from the judge's critique and the judge scores the rewrite, for at most ``max_rounds`` rounds;
the best-scored version is kept. When the budget runs out mid-loop the row keeps its best version so far.
"""

from __future__ import annotations

from typing import Any

from data_gen import prompts
from data_gen.config import ScoreConfig as Config
from data_gen.corpus import GENERATED_FIELDS, THOUGHT_FIELDS, candidates, read_results
from data_gen.errors import BudgetExhausted, RowFailed
from data_gen.runner import run_stage
from data_gen.store import Record
from data_gen.workflow import ApiStage, ChatRequest, Workflow, ask


def read_rows(cfg: Config) -> list[Record]:
    assert cfg.input is not None
    reflected = read_results(cfg.reflected, THOUGHT_FIELDS) if cfg.reflected else []
    rows, _ = candidates(read_results(cfg.input, GENERATED_FIELDS, purpose="score"), reflected)
    return rows


def _rank(scores: dict[str, Any]) -> tuple[int, int]:
    """Worst criterion first, then the total: a thought is as good as its weakest aspect."""
    values = [scores[k] for k in prompts.SCORE_KEYS]
    return min(values), sum(values)


def stage(cfg: Config) -> ApiStage:
    def request(model: str, messages: tuple[dict[str, str], ...]) -> ChatRequest:
        return ChatRequest(model, messages, cfg.max_tokens, cfg.temperature, cfg.seed)

    def workflow(row: Record) -> Workflow:
        premise, hypothesis, gold = row["premise"], row["hypothesis"], row["label"]

        def judge(thought: str) -> Any:
            scores = yield from ask(
                request(cfg.model, prompts.judge_messages(premise, hypothesis, gold, thought)),
                prompts.parse_scores, cfg.max_tries, prompts.reprompt,
            )
            return {"thought_process": thought, **scores}

        history = [(yield from judge(row["thought_process"]))]  # no score at all: the row fails or stays pending
        stopped = None
        while _rank(history[-1])[0] < cfg.threshold and len(history) <= cfg.max_rounds:
            try:
                rewrite = yield from ask(
                    request(cfg.improve_model, prompts.improve_messages(premise, hypothesis, gold, history[-1]["thought_process"], history[-1])),
                    prompts.parse_improvement(gold), cfg.max_tries, prompts.reprompt,
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

    return ApiStage("score", read_rows(cfg), workflow, (cfg.model, cfg.improve_model))


def main(cfg: Config) -> int:
    return run_stage(stage(cfg), cfg)
