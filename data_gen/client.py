"""The one place that talks to the Mistral API, through the official SDK (``from mistralai.client import Mistral``).

Adds what the SDK leaves to the caller: a cap on requests in flight, a requests-per-second limit, retries with
exponential backoff and jitter on 429 / 5xx / timeouts / dropped connections (honouring ``Retry-After``, which
also pauses every other request to that model, including those already holding a slot), a per-request timeout,
the budget check before each chat request and the cost record after it. The SDK's own retries stay off, so every
attempt passes through here.

Transient is not failed: a request whose retries run out on transient errors, or ``outage_s`` seconds in which
no attempt reached the server (connection refused, DNS, TLS, timeouts), raise :class:`ServerUnreachable`, which
stops the stage with its rows still pending; only errors that retrying cannot fix (4xx) fail a request.

The API key is handed to the SDK and nowhere else; the SDK's debug logger (which prints request headers when
``MISTRAL_DEBUG`` is set) is replaced by a silent one, and error texts are scrubbed before they are stored.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx2
from mistralai.client import Mistral, errors, models
from mistralai.client.utils.logger import NoOpLogger

from data_gen import sdk_models
from data_gen.config import ApiStageConfig, check_server_url
from data_gen.errors import FatalAPIError, RequestFailed, ServerUnreachable, redact
from data_gen.ledger import Ledger
from data_gen.row_workflow import ChatRequest, Reply

log = logging.getLogger(__name__)
T = TypeVar("T")
TERMINAL_JOB_STATES = ("SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED")
JOB_TAG_KEY = "data_gen_tag"
_MESSAGE_TYPES = {"system": models.SystemMessage, "user": models.UserMessage, "assistant": models.AssistantMessage}
# Typed messages, not dicts: the SDK re-validates dicts through a throw-away pydantic model per call, which
# costs ~2 ms of CPU per request, a third of its overhead (measured; it caps the rows/s of a concurrent run).
_JSON_MODE = models.ResponseFormat(type="json_object")
sdk_models.install()  # the SDK's per-call pydantic wrapper classes, built once per type instead
DEFAULT_SERVER_URL = "https://api.mistral.ai"
#: Request fields only the Mistral API knows. An OpenAI-style server (transformers serve, vLLM, llama.cpp) may refuse
#: them with a 422 that names the field; the field is then left out for the rest of the run.
MISTRAL_ONLY_FIELDS = ("random_seed", "safe_prompt", "prompt_mode")


class RateLimiter:
    """Spaces request starts ``1/rps`` apart; ``pause`` holds back every start to one model (a 429's ``Retry-After``).

    A pause also catches requests that claimed their slot earlier and are still waiting for it: each one looks
    at the pause again when its wait ends, so nothing is sent to a paused model.
    """

    def __init__(self, rps: float | None, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rps if rps else 0.0
        self._sleep, self._clock = sleep, clock
        self._next = 0.0
        self._paused_until: dict[str | None, float] = {}

    async def wait(self, key: str | None = None) -> None:
        while True:
            now = self._clock()
            # Claiming the slot happens before the first await, so concurrent callers get distinct slots.
            slot = max(now, self._next, self._paused_until.get(key, 0.0))
            self._next = slot + self._interval
            if slot <= now:
                return
            await self._sleep(slot - now)
            if self._paused_until.get(key, 0.0) <= slot:  # no new pause began while this one slept
                return

    def pause(self, seconds: float, key: str | None = None) -> None:
        self._paused_until[key] = max(self._paused_until.get(key, 0.0), self._clock() + seconds)


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


def transport_reason(exc: BaseException) -> str:
    """Why a request never got an answer, in a few words: the OS error under the HTTP library's wrappers."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed: {cause.strerror or cause}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {getattr(cause, 'reason', None) or cause}"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        cause = cause.__cause__ or cause.__context__
    return f"connection error ({type(exc).__name__}: {exc})" if str(exc) else f"connection error ({type(exc).__name__})"


class _Transient(Exception):
    """An attempt that may succeed if repeated (429, 5xx, timeout, dropped connection).

    ``reached``: the server answered (429/5xx), so it is up; otherwise the attempt counts towards an outage.
    """

    def __init__(self, reason: str, retry_after: float | None = None, reached: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.reached = reason, retry_after, reached


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
        outage_s: float = 5.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        check_server_url(server_url)
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
        self._outage_s = outage_s
        self._failing_since: float | None = None  # first attempt since the last answer that did not reach the server
        self._down: ServerUnreachable | None = None
        self._down_event = asyncio.Event()
        self._refused_fields: set[str] = set()  # Mistral-only fields this server answered 422 to

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
            outage_s=cfg.outage_s,
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
        text = redact(text, {self._api_key} if self._api_key else set())
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
                return _Transient(f"HTTP {status}", retry_after_seconds(exc.headers), reached=True)
            raise RequestFailed(f"HTTP {status}: {self.scrub(exc.body or '')}", status=status) from None
        if isinstance(exc, httpx2.TimeoutException):
            return _Transient(f"timed out after {self._timeout_s:g}s")
        if isinstance(exc, (httpx2.TransportError, errors.NoResponseError)):
            return _Transient(self.scrub(transport_reason(exc)))
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

    @property
    def url(self) -> str:
        return self._server_url or DEFAULT_SERVER_URL

    def _check_up(self) -> None:
        if self._down is not None:
            raise self._down

    def _went_down(self, message: str) -> ServerUnreachable:
        """The first outage found stops every request: each raises it at its next step."""
        if self._down is None:
            self._down = ServerUnreachable(message)
            self._down_event.set()  # wakes every request sleeping before a retry
        return self._down

    def _note(self, transient: _Transient | None) -> None:
        """Track whether the server is reachable; raise once nothing has reached it for ``outage_s``."""
        if transient is None or transient.reached:
            self._failing_since = None
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._outage_s:
            raise self._went_down(
                f"cannot reach {self.url} ({transient.reason}; nothing got through for {now - self._failing_since:.1f}s)"
            )

    async def _wait_before_retry(self, delay: float) -> None:
        """Sleep before a retry, cut short when another request finds the server down."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        down = asyncio.ensure_future(self._down_event.wait())
        try:
            await asyncio.wait({sleeper, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            down.cancel()
        self._check_up()

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], before_retry: Callable[[], Awaitable[T | None]] | None = None,
        model: str | None = None,
    ) -> T:
        """Run ``call`` under the limits, retrying transient failures; ``before_retry`` may find it already done."""
        reason = ""
        for attempt in range(self.max_retries + 1):
            self._check_up()
            if attempt and before_retry is not None:
                found = await before_retry()
                if found is not None:
                    return found
            async with self._slots:
                # Inside the slot, so a Retry-After pause that began while this request queued still holds it.
                await self._limiter.wait(model)
                self._check_up()
                try:
                    result = await call()
                except Exception as exc:  # classified below: transient ones are retried, others re-raised
                    if isinstance(exc, errors.MistralError):
                        self._note(None)  # an HTTP answer: the server is reachable
                    transient = self._classify(exc)
                else:
                    self._note(None)
                    return result
            self._note(transient)
            reason = transient.reason
            if attempt == self.max_retries:
                break
            delay = self._delay(attempt, transient.retry_after)
            if transient.retry_after is not None:
                self._limiter.pause(delay, model)
            log.debug("%s: %s; retry %d in %.2fs", what, reason, attempt + 1, delay)
            await self._wait_before_retry(delay)
        tries = f"{what} gave up after {self.max_retries + 1} tries"
        if transient.reached:  # up, but every answer was a 429/5xx: as good as down for this run
            raise self._went_down(f"{self.url} kept answering {reason} ({tries})")
        raise self._went_down(f"cannot reach {self.url} ({reason}; {tries})")

    async def complete(self, request: ChatRequest, row_id: str, journal: Callable[[Reply], None] | None = None) -> Reply:
        """One chat completion: budget reservation, limits, retries, then the cost record.

        ``journal`` (run in the same worker thread as the ledger, just before it) saves the paid reply before it
        is returned, so a kill after this point cannot lose it. It goes first because the ledger's fsync takes
        milliseconds (more when several replies queue on the disk): a kill inside it would otherwise leave a
        reply charged but not saved, to be paid for again.
        """
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
            response = await self._send_chat(kwargs, row_id)
            usage = response.usage
            reply = Reply(
                text=text_of(response.choices[0].message.content if response.choices and response.choices[0].message else None),
                prompt_tokens=int(usage.prompt_tokens or 0),
                completion_tokens=int(usage.completion_tokens or 0),
                model=request.model,
            )
            # fsync'd in a worker thread: a slow disk must not stall the other requests in flight.
            await asyncio.to_thread(self._record, request.model, reply, row_id, journal)
        finally:
            self.ledger.release(bound)
        return reply

    async def _send_chat(self, kwargs: dict[str, Any], row_id: str) -> Any:
        """The chat request, less the Mistral-only fields this server refuses (each dropped once, with a warning).

        What is left out is decided as each attempt is sent, so requests queued behind the first refusal never
        send the field again.
        """
        sent: dict[str, Any] = {}

        def call() -> Awaitable[Any]:
            sent.clear()
            sent.update({k: v for k, v in kwargs.items() if k not in self._refused_fields})
            return self.sdk.chat.complete_async(**sent)

        while True:
            try:
                return await self._retrying(f"row {row_id}", call, model=kwargs["model"])
            except RequestFailed as e:
                named = {f for f in MISTRAL_ONLY_FIELDS if f in sent and e.status == 422 and f in str(e)}
                if not named:
                    raise
                if not named <= self._refused_fields:
                    log.warning("%s refuses %s (HTTP 422): sending requests without %s from now on",
                                self.url, ", ".join(sorted(named)), "it" if len(named) == 1 else "them")
                self._refused_fields |= named

    def _record(self, model: str, reply: Reply, row_id: str, journal: Callable[[Reply], None] | None) -> None:
        if journal is not None:
            journal(reply)  # one unsynced write: microseconds, so a kill between the two lines is all but impossible
        self.ledger.charge(model, reply.prompt_tokens, reply.completion_tokens, batch=False, row_id=row_id)

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
