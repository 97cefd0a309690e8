"""The one place that talks to the Mistral API, through the official SDK (``from mistralai.client import Mistral``).

Adds what the SDK leaves to the caller: a cap on requests in flight, a requests-per-second limit, retries with
exponential backoff and jitter on 429 / 5xx / timeouts / dropped connections (honouring ``Retry-After``, which
also pauses every other request), a per-request timeout, the budget check before each chat request and the
cost record after it. The SDK's own retries stay off, so every attempt passes through here.

The API key is handed to the SDK and nowhere else; the SDK's debug logger (which prints request headers when
``MISTRAL_DEBUG`` is set) is replaced by a silent one, and error texts are scrubbed before they are stored.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx2
from mistralai.client import Mistral, errors, models
from mistralai.client.utils.logger import NoOpLogger

from data_gen.config import ApiStageConfig
from data_gen.errors import FatalAPIError, RequestFailed
from data_gen.ledger import Ledger
from data_gen.workflow import ChatRequest, Reply

log = logging.getLogger(__name__)
T = TypeVar("T")
TERMINAL_JOB_STATES = ("SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED")
JOB_TAG_KEY = "data_gen_tag"
_MESSAGE_TYPES = {"system": models.SystemMessage, "user": models.UserMessage, "assistant": models.AssistantMessage}
# Typed messages, not dicts: the SDK re-validates dicts through a throw-away pydantic model per call, which
# costs ~2 ms of CPU per request, a third of its overhead (measured; it caps the rows/s of a concurrent run).
_JSON_MODE = models.ResponseFormat(type="json_object")


class RateLimiter:
    """Spaces request starts ``1/rps`` apart; ``pause`` holds every start back (a 429's ``Retry-After``)."""

    def __init__(self, rps: float | None, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rps if rps else 0.0
        self._sleep, self._clock = sleep, clock
        self._next = 0.0
        self._paused_until = 0.0

    async def wait(self) -> None:
        now = self._clock()
        # Claiming the slot happens before the first await, so concurrent callers get distinct slots.
        slot = max(now, self._next, self._paused_until)
        self._next = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


def retry_after_seconds(headers: Any) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def text_of(content: Any) -> str:
    """A message's content: a string, or chunks (SDK objects or JSON dicts) of which the text ones count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join((c.get("text") if isinstance(c, dict) else getattr(c, "text", None)) or "" for c in content)


class _Transient(Exception):
    """An attempt that may succeed if repeated (429, 5xx, timeout, dropped connection)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class MistralClient:
    """Async client for chat completions and the Batch API; use as ``async with``."""

    def __init__(
        self,
        *,
        api_key: str | None,
        server_url: str | None,
        ledger: Ledger,
        concurrency: int = 16,
        requests_per_second: float | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        api_key_env: str = "MISTRAL_API_KEY",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._api_key, self._server_url, self._api_key_env = api_key, server_url, api_key_env
        self.ledger = ledger
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._limiter = RateLimiter(requests_per_second, sleep)
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._timeout_s = timeout_s
        self.max_retries = max_retries
        self._backoff = (backoff_base_s, backoff_max_s)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http: httpx2.AsyncClient | None = None
        self._sdk: Mistral | None = None

    @classmethod
    def from_config(cls, cfg: ApiStageConfig, api_key: str | None, ledger: Ledger) -> MistralClient:
        return cls(
            api_key=api_key,
            server_url=cfg.server_url,
            ledger=ledger,
            concurrency=cfg.concurrency,
            requests_per_second=cfg.requests_per_second,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
            api_key_env=cfg.api_key_env,
        )

    async def __aenter__(self) -> MistralClient:
        pool = self._concurrency + 4  # a few spare connections for batch polling
        self._http = httpx2.AsyncClient(
            follow_redirects=True, limits=httpx2.Limits(max_connections=pool, max_keepalive_connections=pool)
        )
        self._sdk = Mistral(
            api_key=self._api_key,
            server_url=self._server_url,
            async_client=self._http,
            timeout_ms=self._timeout_ms,
            debug_logger=NoOpLogger(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = self._sdk = None

    @property
    def sdk(self) -> Mistral:
        if self._sdk is None:
            raise RuntimeError("use MistralClient inside 'async with'")
        return self._sdk

    def scrub(self, text: str) -> str:
        """Error text safe to store: never the key, never unbounded."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text if len(text) <= 300 else text[:300] + "…"

    def _classify(self, exc: Exception) -> _Transient:
        """Turn an SDK/transport error into a retryable reason, or raise the final error."""
        if isinstance(exc, errors.MistralError):
            status = exc.status_code
            if status in (401, 403):
                raise FatalAPIError(
                    f"the API refused the request with HTTP {status}: check the key in ${self._api_key_env} "
                    "and that it may use this model"
                ) from None
            if status in (408, 429) or status >= 500:
                return _Transient(f"HTTP {status}", retry_after_seconds(exc.headers))
            raise RequestFailed(f"HTTP {status}: {self.scrub(exc.body or '')}") from None
        if isinstance(exc, httpx2.TimeoutException):
            return _Transient(f"timed out after {self._timeout_s:g}s")
        if isinstance(exc, (httpx2.TransportError, errors.NoResponseError)):
            return _Transient(f"connection error ({type(exc).__name__})")
        if isinstance(exc, errors.ResponseValidationError):
            raise RequestFailed(f"malformed response from the server: {self.scrub(str(exc))}") from None
        raise exc

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter; a ``Retry-After`` is a floor, plus up to 10 % jitter."""
        if retry_after is not None:
            return retry_after * (1 + 0.1 * self._rng.random())
        base, cap = self._backoff
        step = min(cap, base * 2**attempt)
        return step / 2 + self._rng.uniform(0, step / 2)

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], before_retry: Callable[[], Awaitable[T | None]] | None = None
    ) -> T:
        """Run ``call`` under the limits, retrying transient failures; ``before_retry`` may find it already done."""
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt and before_retry is not None:
                found = await before_retry()
                if found is not None:
                    return found
            await self._limiter.wait()
            async with self._slots:
                try:
                    return await call()
                except Exception as exc:  # classified below: transient ones are retried, others re-raised
                    transient = self._classify(exc)
            reason = transient.reason
            if attempt == self.max_retries:
                break
            delay = self._delay(attempt, transient.retry_after)
            if transient.retry_after is not None:
                self._limiter.pause(delay)
            log.debug("%s: %s; retry %d in %.2fs", what, reason, attempt + 1, delay)
            await self._sleep(delay)
        raise RequestFailed(f"gave up after {self.max_retries + 1} tries: {reason}")

    async def complete(self, request: ChatRequest, row_id: str) -> Reply:
        """One chat completion: budget reservation, limits, retries, then the cost record."""
        bound = self.ledger.bound(request.model, request.messages, request.max_tokens, batch=False)
        self.ledger.reserve(bound)
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [_MESSAGE_TYPES[m["role"]](content=m["content"]) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "response_format": _JSON_MODE,
            "timeout_ms": self._timeout_ms,
        }
        if request.seed is not None:
            kwargs["random_seed"] = request.seed
        try:
            response = await self._retrying(f"row {row_id}", lambda: self.sdk.chat.complete_async(**kwargs))
            usage = response.usage
            reply = Reply(
                text=text_of(response.choices[0].message.content if response.choices and response.choices[0].message else None),
                prompt_tokens=int(usage.prompt_tokens or 0),
                completion_tokens=int(usage.completion_tokens or 0),
                model=request.model,
            )
            # fsync'd in a worker thread: a slow disk must not stall the other requests in flight.
            await asyncio.to_thread(
                self.ledger.charge, request.model, reply.prompt_tokens, reply.completion_tokens, batch=False, row_id=row_id
            )
        finally:
            self.ledger.release(bound)
        return reply

    # --- Batch API ---

    async def upload_batch_file(self, name: str, data: bytes) -> str:
        response = await self._retrying(
            "batch file upload",
            lambda: self.sdk.files.upload_async(file={"file_name": name, "content": data}, purpose="batch"),
        )
        return response.id

    async def find_job(self, tag: str, since: float) -> Any | None:
        """The batch job carrying ``tag`` in its metadata, created after ``since`` (epoch seconds), if any."""
        after = datetime.fromtimestamp(since, timezone.utc) - timedelta(minutes=10)
        page = 0
        while True:
            listing = await self._retrying(
                "batch job lookup",
                lambda: self.sdk.batch.jobs.list_async(page=page, page_size=100, created_after=after, created_by_me=True),
            )
            jobs = listing.data or []
            for job in jobs:
                if (job.metadata or {}).get(JOB_TAG_KEY) == tag:
                    return job
            if len(jobs) < 100:
                return None
            page += 1

    async def create_job(self, *, file_id: str, model: str, tag: str, since: float, timeout_hours: int) -> Any:
        """Create a batch job at most once: before any retry, look for the job the failed attempt may have made."""
        return await self._retrying(
            "batch job creation",
            lambda: self.sdk.batch.jobs.create_async(
                input_files=[file_id], endpoint="/v1/chat/completions", model=model,
                metadata={JOB_TAG_KEY: tag}, timeout_hours=timeout_hours,
            ),
            before_retry=lambda: self.find_job(tag, since),
        )

    async def get_job(self, job_id: str) -> Any:
        return await self._retrying("batch job poll", lambda: self.sdk.batch.jobs.get_async(job_id=job_id))

    async def download(self, file_id: str) -> bytes:
        async def fetch() -> bytes:
            response = await self.sdk.files.download_async(file_id=file_id)
            try:
                return await response.aread()
            finally:
                await response.aclose()

        return await self._retrying("batch file download", fetch)
