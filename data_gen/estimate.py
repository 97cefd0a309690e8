"""``--dry-run``: tokens and GBP of a stage's pending rows, computed offline, before anything is paid for.

Prompt tokens are counted exactly as the API bills them, with mistral-common's tokenizer for the model family
named in the price table (``v3`` for open-mistral-7b, ``tekken`` for open-mistral-nemo and newer models). The
answer length is not known in advance: the report gives the expected cost (first tries only,
``expected_output_tokens`` per answer) and the most it can cost: ``max_tries`` tries per request, each re-prompt
resending the conversation so far (the previous answers, at most ``max_tokens`` each, and the re-prompts, whose
size is bounded by ``workflow.MAX_REASON_CHARS``), every answer ``max_tokens`` long. Retries of transient errors
are not billed; score's rewrite rounds come on top and are named as such.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from functools import cache
from typing import Any

from data_gen import prompts
from data_gen.config import ApiStageConfig
from data_gen.ledger import TEMPLATE_TOKENS_PER_MESSAGE, Ledger
from data_gen.row_workflow import MAX_REASON_CHARS, ApiStage, ChatRequest
from data_gen.store import Record

SAMPLE = 2000  # rows tokenized; larger stages are extrapolated from an even sample


@cache
def _tokenizer(kind: str) -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MistralTokenizer.v3(is_tekken=kind == "tekken")


def prompt_tokens(request: ChatRequest, kind: str) -> int:
    """Prompt tokens of a chat request under the model's chat template."""
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    messages = [kinds[m["role"]](content=m["content"]) for m in request.messages]
    return len(_tokenizer(kind).encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens)


def reprompt_growth(max_tokens: int) -> int:
    """Prompt tokens each unusable answer adds to the next try: the answer itself plus the re-prompt message."""
    reprompt_bytes = len(prompts.reprompt("").encode("utf-8")) + 4 * MAX_REASON_CHARS  # UTF-8: <= 4 bytes a character
    return max_tokens + reprompt_bytes + 2 * TEMPLATE_TOKENS_PER_MESSAGE


def worst_case(first_prompt: int, max_tries: int, max_tokens: int) -> tuple[int, int, int]:
    """(requests, prompt tokens, answer tokens) of one request asked ``max_tries`` times, the conversation growing."""
    growth = reprompt_growth(max_tokens)
    prompt = sum(first_prompt + k * growth for k in range(max_tries))
    return max_tries, prompt, max_tries * max_tokens


def report(stage: ApiStage, todo: list[Record], cfg: ApiStageConfig, ledger: Ledger) -> str:
    """A human-readable estimate for the rows a real run would process now."""
    step = max(1, -(-len(todo) // SAMPLE))
    sample = todo[::step]
    scale = len(todo) / max(1, len(sample))
    keys = ("requests", "prompt", "most_requests", "most_prompt", "most_answer")
    per_model: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(keys, 0.0))
    for row in sample:
        request = next(stage.workflow(row))
        kind = ledger.price(request.model).tokenizer
        first = prompt_tokens(request, kind)
        m = per_model[request.model]
        m["requests"] += scale
        m["prompt"] += first * scale
        for key, value in zip(keys[2:], worst_case(first, cfg.max_tries, request.max_tokens)):
            m[key] += value * scale
    lines = [
        f"dry run, {stage.name}: {len(todo)} of {len(stage.rows)} rows to do; nothing was sent or written",
    ]
    totals = {"expected": [0.0, 0.0], "at most": [0.0, 0.0]}  # [sync, batch]
    for model, m in per_model.items():
        price = ledger.price(model)
        n, prompt, expected = round(m["requests"]), round(m["prompt"]), round(m["requests"]) * cfg.expected_output_tokens
        most_n, most_prompt, most_answer = (round(m[k]) for k in keys[2:])
        lines.append(
            f"  {model}: {n} requests, {prompt:,} prompt tokens ({price.tokenizer} tokenizer"
            f"{', sampled' if step > 1 else ''}), answers ~{expected:,} tokens expected"
        )
        lines.append(
            f"    at most (with re-prompts, {cfg.max_tries} tries per row): {most_n:,} requests, "
            f"{most_prompt:,} prompt tokens, {most_answer:,} answer tokens"
        )
        totals["expected"][0] += price.cost(prompt, expected, batch=False)
        totals["expected"][1] += price.cost(prompt, expected, batch=True)
        totals["at most"][0] += price.cost(most_prompt, most_answer, batch=False)
        totals["at most"][1] += price.cost(most_prompt, most_answer, batch=True)
    def gbp(x: float) -> str:
        return f"£{x:.4f}".rjust(11)

    lines += [
        "  cost in GBP     expected      at most",
        f"    sync API  {gbp(totals['expected'][0])}  {gbp(totals['at most'][0])}",
        f"    batch API {gbp(totals['expected'][1])}  {gbp(totals['at most'][1])}",
        f"  spent on this output so far: £{ledger.spent:.4f}"
        + (f"; budget £{cfg.budget:.4f}" if cfg.budget is not None else "; no budget set"),
        (
            "  expected: first tries only; at most: every try of every row re-prompted up to max_tries, each answer "
            "max_tokens long (retries after 429/5xx/timeouts are not billed)"
        ),
    ]
    if stage.name == "score":
        lines.append(f"  not included: rewrite and re-judge rounds (up to {2 * getattr(cfg, 'max_rounds', 0)} more "
                     "requests per row, each with its own re-prompts)")
    return "\n".join(lines)
