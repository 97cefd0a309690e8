"""The cost ledger: every paid call's tokens and GBP, persisted, and the budget check made *before* each call.

Why reserve before calling: a request's cost is known only when it returns, and up to ``concurrency`` requests
are in flight. Each request reserves an upper bound of its cost (prompt bytes bound the prompt tokens, since
every Mistral token covers at least one byte, and ``max_tokens`` bounds the answer); a request whose bound does
not fit under ``budget - spent - reserved`` is not sent. So the recorded spend never passes the budget.

The ledger journal lives beside the stage output, so the budget counts every run that wrote to that output,
not just the current one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from data_gen.config import Price
from data_gen.errors import BudgetExhausted, ConfigError
from data_gen.row_workflow import Reply
from data_gen.store import Journal

#: Tokens a chat template may add per message ([INST], [/INST], BOS/EOS, a leading space piece) and per request.
TEMPLATE_TOKENS_PER_MESSAGE = 8


def prompt_token_bound(messages: Iterable[Mapping[str, Any]]) -> int:
    """An upper bound on the prompt tokens the API will bill for ``messages``."""
    return sum(len(str(m["content"]).encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages) + (
        TEMPLATE_TOKENS_PER_MESSAGE
    )


class Ledger:
    """Spend so far (all runs on this output) plus reservations for requests in flight."""

    def __init__(self, prices: Mapping[str, Price], budget: float | None = None, path: Path | None = None) -> None:
        self.prices = dict(prices)
        self.budget = budget
        self._journal = Journal(path) if path is not None else None
        self._lock = threading.Lock()  # charge() may run in worker threads (see MistralClient.complete)
        self._reserved = 0.0
        self._keys: set[str] = set()
        self.spent = 0.0
        self.spent_this_run = 0.0
        self.by_model: dict[str, dict[str, float]] = {}
        for _, rec in self._journal.read() if self._journal else []:
            self._add(rec)
        self.spent_this_run = 0.0

    def _add(self, rec: Mapping[str, Any]) -> None:
        gbp = float(rec.get("gbp", 0.0))
        self.spent += gbp
        self.spent_this_run += gbp
        m = self.by_model.setdefault(
            str(rec.get("model")), {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "gbp": 0.0}
        )
        m["requests"] += 1
        m["prompt_tokens"] += int(rec.get("prompt_tokens", 0))
        m["completion_tokens"] += int(rec.get("completion_tokens", 0))
        m["gbp"] += gbp
        if rec.get("key"):
            self._keys.add(str(rec["key"]))

    def price(self, model: str) -> Price:
        try:
            return self.prices[model]
        except KeyError:
            known = ", ".join(sorted(self.prices)) or "none"
            raise ConfigError(f"no price for model {model!r} in the price table (known: {known})") from None

    def bound(self, model: str, messages: Iterable[Mapping[str, Any]], max_tokens: int, batch: bool) -> float:
        """Upper bound of one request's cost in GBP."""
        return self.price(model).cost(prompt_token_bound(messages), max_tokens, batch)

    def usage_of(self, replies: list[Reply], batch: bool) -> dict[str, Any]:
        """Requests, tokens and GBP of one row's replies: what its record says it cost."""
        return {
            "requests": len(replies),
            "prompt_tokens": sum(r.prompt_tokens for r in replies),
            "completion_tokens": sum(r.completion_tokens for r in replies),
            "cost_gbp": round(sum(self.price(r.model).cost(r.prompt_tokens, r.completion_tokens, batch) for r in replies), 10),
        }

    def remaining(self) -> float:
        """GBP still free under the budget (infinite without one)."""
        return float("inf") if self.budget is None else self.budget - self.spent - self._reserved

    def reserve(self, amount: float) -> None:
        """Hold ``amount`` for a request about to be sent, or refuse it."""
        if amount > self.remaining() + 1e-12:
            raise BudgetExhausted(
                f"budget £{self.budget:.4f} reached: £{self.spent:.4f} spent, £{self._reserved:.4f} in flight, "
                f"next request may cost up to £{amount:.6f}"
            )
        self._reserved += amount

    def release(self, amount: float) -> None:
        self._reserved = max(0.0, self._reserved - amount)

    def charged(self, key: str) -> bool:
        """Whether a call with this idempotency key (batch results) is already in the ledger."""
        return key in self._keys

    def charge(
        self, model: str, prompt_tokens: int, completion_tokens: int, *, batch: bool, row_id: str, key: str | None = None
    ) -> float:
        """Record one paid call (durably, before the caller uses its answer) and return its cost.

        Thread-safe. The caller keeps the request's reservation until this returns, so the budget check never
        sees the call as neither reserved nor spent.
        """
        gbp = self.price(model).cost(prompt_tokens, completion_tokens, batch)
        rec: dict[str, Any] = {
            "row_id": row_id,
            "model": model,
            "mode": "batch" if batch else "sync",
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "gbp": round(gbp, 10),
        }
        if key is not None:
            rec["key"] = key
        if self._journal is not None:
            self._journal.append(rec)
        with self._lock:
            self._add(rec)
        return gbp

    def summary(self) -> dict[str, Any]:
        return {
            "spent_gbp": self.spent,
            "spent_this_run_gbp": self.spent_this_run,
            "budget_gbp": self.budget,
            "by_model": self.by_model,
        }

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
