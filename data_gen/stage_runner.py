"""Runs an API stage: picks the pending rows, then estimates (``--dry-run``), or drives every row's workflow
request by request (concurrent workers) or through the Batch API, recording each row as it finishes.

Exit status (constants in :mod:`data_gen.errors`): 0 when every row is done; 4 when the run finished but some
rows failed (count and top reasons in the summary); 3 when it stopped early and a rerun continues (budget
reached, batch job still running, server unreachable, ``--limit``); errors (2) are raised as
:class:`DataGenError` for the CLI, a second run on a locked output among them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from data_gen import estimate
from data_gen.batch_api import run_batch
from data_gen.client import MistralClient
from data_gen.config import ApiStageConfig, check_server_url
from data_gen.errors import (
    EXIT_DONE,
    EXIT_FAILED_ROWS,
    EXIT_RESUMABLE,
    BudgetExhausted,
    FatalAPIError,
    RequestFailed,
    RowFailed,
    ServerUnreachable,
)
from data_gen.ledger import Ledger
from data_gen.progress import RowProgress
from data_gen.row_workflow import ApiStage, ChatRequest, Reply, Workflow, replay
from data_gen.store import (
    OutputLock,
    Record,
    ReplyJournal,
    RowStore,
    atomic_write_json,
    done_record,
    failed_record,
    sidecar,
)

log = logging.getLogger(__name__)

TOP_REASONS = 3


async def drive(workflow: Workflow, ask: Callable[[ChatRequest], Awaitable[Reply]], replies: list[Reply]) -> Record:
    """Replay ``replies`` (paid earlier), then answer the workflow's requests until it returns.

    Each new reply is appended to ``replies``; a budget refusal is thrown into the workflow (it may finish early).
    """
    try:
        request = replay(workflow, list(replies))
        while True:
            try:
                reply = await ask(request)
            except BudgetExhausted as e:
                request = workflow.throw(e)
            else:
                replies.append(reply)
                request = workflow.send(reply)
    except StopIteration as finished:
        return finished.value


class _Stop:
    """Why the workers stopped taking rows (the first reason wins)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.message = ""
        self.fatal: FatalAPIError | None = None

    def set(self, reason: str, message: str = "") -> None:
        if self.reason is None:
            self.reason, self.message = reason, message


async def run_sync(
    stage: ApiStage, todo: list[Record], client: MistralClient, store: RowStore, progress: RowProgress, workers: int,
    journal: ReplyJournal, saved: dict[str, list[Reply]],
) -> _Stop:
    """``workers`` rows in flight; every paid reply is journalled as it arrives, each finished row is written."""
    rows = iter(todo)  # shared by the workers: every row is taken exactly once
    stop = _Stop()

    async def work(row: Record) -> None:
        replies = list(saved.get(row["id"], ()))

        async def ask(request: ChatRequest) -> Reply:
            attempt = len(replies)
            return await client.complete(request, row["id"], lambda reply: journal.append(row, attempt, reply))

        try:
            result = await drive(stage.workflow(row), ask, replies)
        except BudgetExhausted as e:
            if stop.reason is None:
                log.warning("%s; finishing the requests in flight, then stopping", e)
            stop.set("budget")
        except (RowFailed, RequestFailed) as e:
            record = failed_record(row, client.scrub(str(e)), client.ledger.usage_of(replies, batch=False))
            await asyncio.to_thread(store.write_failed, record)  # fsync off the event loop
            progress.advance(failed=True)
        except ServerUnreachable as e:
            stop.set("unreachable", str(e))  # the row stays pending; its replies so far are journalled
        except FatalAPIError as e:
            stop.set("fatal")
            stop.fatal = stop.fatal or e
        else:
            await asyncio.to_thread(store.write_done, done_record(row, result, client.ledger.usage_of(replies, batch=False)))
            progress.advance()

    async def worker() -> None:
        for row in rows:
            if stop.reason:
                return
            await work(row)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return stop


async def _execute(stage: ApiStage, todo: list[Record], cfg: ApiStageConfig, api_key: str | None,
                   store: RowStore, ledger: Ledger, journal: ReplyJournal, saved: dict[str, list[Reply]]) -> _Stop:
    async with MistralClient.from_config(cfg, api_key, ledger) as client:
        if cfg.batch:
            stop = _Stop()
            try:
                reason = await run_batch(stage, todo, cfg, client, store, saved)
            except ServerUnreachable as e:
                stop.set("unreachable", str(e))
            else:
                if reason:
                    stop.set(reason)
            return stop
        with RowProgress(stage.name, len(todo), ledger, quiet=cfg.quiet) as progress:
            return await run_sync(stage, todo, client, store, progress, cfg.concurrency, journal, saved)


def unique_rows(stage: ApiStage) -> int:
    """Keep the first row of each id (an input written twice to must not be paid for twice); return how many went."""
    seen: set[str] = set()
    unique = [r for r in stage.rows if not (r["id"] in seen or seen.add(r["id"]))]  # type: ignore[func-returns-value]
    dropped = len(stage.rows) - len(unique)
    if dropped:
        log.warning("%s: %d row(s) repeat an id already seen; each id is processed once", stage.name, dropped)
        stage.rows = unique
    return dropped


def top_reasons(failed: list[Record], n: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The most common failure reasons, ``[{"reason": …, "rows": k}]``, most frequent first."""
    counts = Counter(str(r.get("reason", "?"))[:160] for r in failed)
    return [{"reason": reason, "rows": k} for reason, k in counts.most_common(n)]


def exit_status(summary: dict[str, Any]) -> int:
    """3 when a rerun has work to continue, else 4 when rows failed, else 0 (every row done)."""
    if summary["stopped"] or summary["pending"]:
        return EXIT_RESUMABLE
    return EXIT_FAILED_ROWS if summary["failed"] else EXIT_DONE


def _summary_line(stage: str, summary: dict[str, Any]) -> str:
    line = f"{stage}: {summary['done']} done, {summary['failed']} failed, {summary['pending']} pending"
    if summary["failure_reasons"]:
        line += " (failed: " + "; ".join(f"{r['rows']}x {r['reason']}" for r in summary["failure_reasons"]) + ")"
    return line


def run_stage(stage: ApiStage, cfg: ApiStageConfig) -> int:
    """Resume-aware entry point shared by generate, reflect and score; returns the exit status."""
    assert cfg.output is not None
    check_server_url(cfg.server_url)  # before any work, even a dry run
    duplicates = unique_rows(stage)
    if cfg.dry_run:
        store = RowStore(cfg.output)
        store.check_inputs(stage.rows)
        todo = store.pending(stage.rows, cfg.retry_failed)[: cfg.limit]
        ledger = Ledger(cfg.prices_for(stage.models), cfg.budget)
        for model in stage.models:
            ledger.price(model)
        print(estimate.report(stage, todo, cfg, ledger))
        return EXIT_DONE
    with OutputLock(cfg.output):
        return _run_locked(stage, cfg, duplicates)


def _run_locked(stage: ApiStage, cfg: ApiStageConfig, duplicates: int) -> int:
    assert cfg.output is not None
    store = RowStore(cfg.output)
    store.check_inputs(stage.rows)
    pending = store.pending(stage.rows, cfg.retry_failed)
    todo = pending if cfg.limit is None else pending[: cfg.limit]
    ledger = Ledger(cfg.prices_for(stage.models), cfg.budget, sidecar(cfg.output, "ledger"))
    for model in stage.models:
        ledger.price(model)  # a missing price is an error before any call, not after
    journal = ReplyJournal(cfg.output)
    # Replies of rows cut off by a kill; a failed row being retried starts afresh.
    saved = journal.load([r for r in pending if r["id"] not in store.failed])
    resuming_batch = cfg.batch and sidecar(cfg.output, "batch", ".json").exists()
    stop = _Stop()
    started = time.monotonic()
    if not todo and not resuming_batch:
        log.info("%s: nothing to do (%d done, %d failed) -> %s", stage.name, len(store.done), len(store.failed), cfg.output)
    else:
        api_key = cfg.api_key()
        log.info(
            "%s: %d rows, %d done earlier, %d failed earlier%s, %d to do now (%s mode, %d resumed from saved replies), "
            "£%.4f spent on this output so far",
            stage.name, len(stage.rows), len(store.done), len(store.failed), " (retrying them)" if cfg.retry_failed else "",
            len(todo), "batch" if cfg.batch else "sync", sum(r["id"] in saved for r in todo), ledger.spent,
        )
        try:
            stop = asyncio.run(_execute(stage, todo, cfg, api_key, store, ledger, journal, saved))
        finally:
            store.close()
            ledger.close()
            journal.close()
        if stop.fatal is not None:
            raise stop.fatal
    ids = {r["id"] for r in stage.rows}
    if not ids:  # e.g. reflect when every label was right: an empty result, not a missing file, for the next stage
        cfg.output.touch(exist_ok=True)
    journal.keep_only(ids - store.done.keys() - store.failed.keys())
    failed = [store.failed[i] for i in ids & store.failed.keys()]
    if stop.reason is None and len(todo) < len(pending):
        stop.set("limit")
    summary = {
        "stage": stage.name,
        "output": str(cfg.output),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "batch" if cfg.batch else "sync",
        "rows": len(ids),
        "done": len(ids & store.done.keys()),
        "failed": len(failed),
        "pending": len(ids - store.done.keys() - store.failed.keys()),
        "failure_reasons": top_reasons(failed),
        "duplicate_ids": stage.input_duplicates + duplicates + store.duplicates,
        "stopped": stop.reason,
        "stop_message": stop.message or None,
        "seconds": round(time.monotonic() - started, 3),
        "cost": ledger.summary(),
    }
    atomic_write_json(sidecar(cfg.output, "summary", ".json"), summary)
    log.info("%s; £%.4f this run, £%.4f in total -> %s", _summary_line(stage.name, summary),
             ledger.spent_this_run, ledger.spent, cfg.output)
    if stop.reason == "budget":
        log.warning("stopped by the budget (£%.4f); rerun with a higher --budget to continue", cfg.budget)
    elif stop.reason == "batch":
        log.warning("batch job still running; rerun the same command to resume polling it (nothing is resubmitted)")
    elif stop.reason == "unreachable":
        print(f"error: {stop.message}; {summary['pending']} rows still pending: rerun the same command to continue",
              file=sys.stderr)
    return exit_status(summary)
