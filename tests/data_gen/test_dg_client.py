"""The client's retry, timeout, rate-limit and budget behaviour, through the real SDK against the loopback server."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from data_gen.client import MistralClient, RateLimiter, retry_after_seconds
from data_gen.config import Price
from data_gen.errors import BudgetExhausted, FatalAPIError, RequestFailed
from data_gen.ledger import Ledger
from data_gen.workflow import ChatRequest

PRICES = {"m": Price(1.0, 2.0)}


def _request(i: int = 0) -> ChatRequest:
    return ChatRequest("m", ({"role": "user", "content": f"Premise: p{i}\nHypothesis: h{i}"},), max_tokens=50, temperature=0.0)


def _run(server_url: str, requests: list[ChatRequest], *, api_key: str, budget: float | None = None,
         sleeps: list[float] | None = None, ledger: Ledger | None = None, **kw) -> list:
    async def fake_sleep(seconds: float) -> None:  # record, do not wait: no test depends on wall time
        sleeps.append(seconds)

    async def go() -> list:
        client = MistralClient(
            api_key=api_key, server_url=server_url, ledger=ledger or Ledger(PRICES, budget), requests_per_second=None,
            backoff_base_s=0.01, backoff_max_s=0.05, rng=random.Random(0),
            **({"sleep": fake_sleep} if sleeps is not None else {}), **kw,
        )
        async with client:
            return await asyncio.gather(*(client.complete(r, str(i)) for i, r in enumerate(requests)), return_exceptions=True)

    return asyncio.run(go())


def test_429_retry_after_is_honoured_then_the_request_gives_up(fake_api, api_key):
    server = fake_api(rate_429=1.0, retry_after_s=0.25)
    sleeps: list[float] = []
    (result,) = _run(server.url, [_request()], api_key=api_key, max_retries=3, sleeps=sleeps)
    assert isinstance(result, RequestFailed) and "gave up after 4 tries: HTTP 429" in str(result)
    assert server.counts["chat"] == 4
    assert sum(s >= 0.25 for s in sleeps) >= 3  # each retry waited at least Retry-After


def test_5xx_is_retried_until_it_succeeds(fake_api, api_key):
    server = fake_api(rate_500=0.5, seed=7)
    results = _run(server.url, [_request(i) for i in range(20)], api_key=api_key, max_retries=12)
    assert all(r.text for r in results), results
    assert server.counts["chat_500"] > 0 and server.counts["chat"] == 20 + server.counts["chat_500"]


def test_a_slow_answer_times_out_and_is_retried(fake_api, api_key):
    server = fake_api(rate_slow=1.0, slow_s=1.0)
    (result,) = _run(server.url, [_request()], api_key=api_key, timeout_s=0.1, max_retries=1)
    assert isinstance(result, RequestFailed) and "timed out after 0.1s" in str(result)
    assert server.counts["chat"] == 2


def test_a_client_error_is_not_retried(fake_api, api_key):
    server = fake_api()
    (result,) = _run(server.url + "/no-such-prefix", [_request()], api_key=api_key, max_retries=5)
    assert isinstance(result, RequestFailed) and "HTTP 404" in str(result)


def test_a_refused_key_is_fatal(fake_api):
    server = fake_api(api_key="the-right-key")
    (result,) = _run(server.url, [_request()], api_key="a-wrong-key", max_retries=5)
    assert isinstance(result, FatalAPIError) and server.counts["unauthorized"] == 1


def test_the_budget_is_checked_before_sending(fake_api, api_key):
    server = fake_api()
    (result,) = _run(server.url, [_request()], api_key=api_key, budget=1e-6)
    assert isinstance(result, BudgetExhausted) and server.counts["chat"] == 0


def test_usage_is_charged_to_the_ledger(fake_api, api_key, tmp_path):
    server = fake_api()
    ledger = Ledger(PRICES, path=tmp_path / "ledger.jsonl")
    (reply,) = _run(server.url, [_request()], api_key=api_key, ledger=ledger)
    ledger.close()
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0 and reply.model == "m"
    expected = PRICES["m"].cost(reply.prompt_tokens, reply.completion_tokens)
    assert ledger.spent == pytest.approx(expected) and ledger.by_model["m"]["requests"] == 1
    assert Ledger(PRICES, path=tmp_path / "ledger.jsonl").spent == pytest.approx(expected)  # persisted


def test_rate_limiter_spaces_starts_and_pauses():
    now = [100.0]
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(round(s, 6))

    async def go() -> None:
        limiter = RateLimiter(4.0, sleep=sleep, clock=lambda: now[0])
        await asyncio.gather(*(limiter.wait() for _ in range(4)))
        limiter.pause(2.0)
        await limiter.wait()

    asyncio.run(go())
    assert sleeps == [0.25, 0.5, 0.75, 2.0]


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after_seconds({"retry-after": when}) <= 30
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None


@pytest.mark.parametrize("attempt", [0, 1, 4, 10])
def test_backoff_grows_exponentially_with_jitter_and_a_cap(attempt):
    client = MistralClient(api_key=None, server_url=None, ledger=Ledger(PRICES), backoff_base_s=1.0, backoff_max_s=8.0)
    step = min(8.0, 2.0**attempt)
    delays = [client._delay(attempt, None) for _ in range(50)]
    assert all(step / 2 <= d <= step for d in delays) and len(set(delays)) > 1
    assert all(3.0 <= client._delay(attempt, 3.0) <= 3.3 for _ in range(20))
