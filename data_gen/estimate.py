"""``--dry-run``: tokens and GBP of a stage's pending rows, computed offline, before anything is paid for.

Prompt tokens are counted exactly as the API bills them, with mistral-common's tokenizer for the model family
named in the price table (``v3`` for open-mistral-7b, ``tekken`` for open-mistral-nemo and newer models). The
answer length is not known in advance: the report gives the expected cost (``expected_output_tokens`` per
answer) and the most it can cost (``max_tokens`` per answer). Re-prompts, retries and later score rounds come
on top and are named as such.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from functools import cache
from typing import Any

from data_gen.config import ApiStageConfig
from data_gen.ledger import Ledger
from data_gen.store import Record
from data_gen.workflow import ApiStage, ChatRequest

SAMPLE = 2000  # rows tokenized; larger stages are extrapolated from an even sample


@cache
def _tokenizer(kind: str) -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MistralTokenizer.v3(is_tekken=kind == "tekken")


def prompt_tokens(request: ChatRequest, kind: str) -> int:
    """Prompt tokens of a chat request under the model's chat template."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    messages = [kinds[m["role"]](content=m["content"]) for m in request.messages]
    return len(_tokenizer(kind).encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens)


def report(stage: ApiStage, todo: list[Record], cfg: ApiStageConfig, ledger: Ledger) -> str:
    """A human-readable estimate for the rows a real run would process now."""
    step = max(1, -(-len(todo) // SAMPLE))
    sample = todo[::step]
    scale = len(todo) / max(1, len(sample))
    per_model: dict[str, dict[str, float]] = defaultdict(lambda: {"requests": 0.0, "prompt": 0.0})
    for row in sample:
        request = next(stage.workflow(row))
        kind = ledger.price(request.model).tokenizer
        per_model[request.model]["requests"] += scale
        per_model[request.model]["prompt"] += prompt_tokens(request, kind) * scale
    lines = [
        f"dry run, {stage.name}: {len(todo)} of {len(stage.rows)} rows to do; nothing was sent or written",
    ]
    totals = {"expected": [0.0, 0.0], "at most": [0.0, 0.0]}  # [sync, batch]
    for model, m in per_model.items():
        price = ledger.price(model)
        n, prompt = round(m["requests"]), round(m["prompt"])
        expected, most = n * cfg.expected_output_tokens, n * cfg.max_tokens
        lines.append(
            f"  {model}: {n} requests, {prompt:,} prompt tokens ({price.tokenizer} tokenizer"
            f"{', sampled' if step > 1 else ''}), answers ~{expected:,} tokens expected, at most {most:,}"
        )
        for label, out in (("expected", expected), ("at most", most)):
            totals[label][0] += price.cost(prompt, out, batch=False)
            totals[label][1] += price.cost(prompt, out, batch=True)
    def gbp(x: float) -> str:
        return f"£{x:.4f}".rjust(11)

    lines += [
        "  cost in GBP     expected      at most",
        f"    sync API  {gbp(totals['expected'][0])}  {gbp(totals['at most'][0])}",
        f"    batch API {gbp(totals['expected'][1])}  {gbp(totals['at most'][1])}",
        f"  spent on this output so far: £{ledger.spent:.4f}"
        + (f"; budget £{cfg.budget:.4f}" if cfg.budget is not None else "; no budget set"),
        "  not included: re-prompts after invalid answers, retries"
        + (", rewrite and re-judge rounds" if stage.name == "score" else ""),
    ]
    return "\n".join(lines)
