"""Runs an API stage: picks the pending rows, then estimates (``--dry-run``), or drives every row's workflow
request by request (concurrent workers) or through the Batch API, recording each row as it finishes.

Exit status: 0 when every pending row ended done or failed; 3 when the run stopped early but can be resumed
(budget reached, batch job still running); errors (2) are raised as :class:`DataGenError` for the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from data_gen import estimate
from data_gen.batch import run_batch
from data_gen.client import MistralClient
from data_gen.config import ApiStageConfig
from data_gen.errors import BudgetExhausted, ConfigError, FatalAPIError, RequestFailed, RowFailed
from data_gen.ledger import Ledger
from data_gen.progress import RowProgress
from data_gen.store import Record, RowStore, atomic_write_json, done_record, failed_record, sidecar
from data_gen.workflow import ApiStage, ChatRequest, Reply, Workflow

log = logging.getLogger(__name__)

EXIT_INCOMPLETE = 3


async def drive(workflow: Workflow, ask: Callable[[ChatRequest], Awaitable[Reply]], replies: list[Reply]) -> Record:
    """Answer a workflow's requests until it returns; a budget refusal is thrown into it (it may finish early)."""
    try:
        request = next(workflow)
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


async def run_sync(
    stage: ApiStage, todo: list[Record], client: MistralClient, store: RowStore, progress: RowProgress, workers: int
) -> str | None:
    """``workers`` rows in flight; each finished row is written before the next one is taken."""
    rows = iter(todo)  # shared by the workers: every row is taken exactly once
    stop: str | None = None
    fatal: FatalAPIError | None = None

    async def worker() -> None:
        nonlocal stop, fatal
        for row in rows:
            if stop:
                return
            replies: list[Reply] = []
            try:
                result = await drive(stage.workflow(row), lambda r: client.complete(r, row["id"]), replies)
            except BudgetExhausted as e:
                if not stop:
                    log.warning("%s; finishing the requests in flight, then stopping", e)
                stop = "budget"
            except (RowFailed, RequestFailed) as e:
                record = failed_record(row, client.scrub(str(e)), client.ledger.usage_of(replies, batch=False))
                await asyncio.to_thread(store.write_failed, record)  # fsync off the event loop
                progress.advance(failed=True)
            except FatalAPIError as e:
                stop, fatal = "fatal", e
            else:
                await asyncio.to_thread(store.write_done, done_record(row, result, client.ledger.usage_of(replies, batch=False)))
                progress.advance()

    await asyncio.gather(*(worker() for _ in range(workers)))
    if fatal is not None:
        raise fatal
    return stop


def _api_key(cfg: ApiStageConfig) -> str | None:
    key = os.environ.get(cfg.api_key_env) or None
    if key is None and cfg.server_url is None:
        raise ConfigError(f"${cfg.api_key_env} is not set: export the Mistral API key (it is read from the environment only)")
    return key


async def _execute(stage: ApiStage, todo: list[Record], cfg: ApiStageConfig, api_key: str | None,
                   store: RowStore, ledger: Ledger) -> str | None:
    async with MistralClient.from_config(cfg, api_key, ledger) as client:
        if cfg.batch:
            return await run_batch(stage, todo, cfg, client, store)
        with RowProgress(stage.name, len(todo), ledger, quiet=cfg.quiet) as progress:
            return await run_sync(stage, todo, client, store, progress, cfg.concurrency)


def run_stage(stage: ApiStage, cfg: ApiStageConfig) -> int:
    """Resume-aware entry point shared by generate, reflect and score."""
    assert cfg.output is not None
    store = RowStore(cfg.output)
    store.check_inputs(stage.rows)
    todo = store.pending(stage.rows, cfg.retry_failed)
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    ledger_path = sidecar(cfg.output, "ledger")
    ledger = Ledger(cfg.price_table(), cfg.budget, ledger_path)
    for model in stage.models:
        ledger.price(model)  # a missing price is an error before any call, not after
    if cfg.dry_run:
        print(estimate.report(stage, todo, cfg, ledger))
        return 0
    resuming_batch = cfg.batch and sidecar(cfg.output, "batch", ".json").exists()
    if not todo and not resuming_batch:
        log.info("%s: nothing to do (%d done, %d failed) -> %s", stage.name, len(store.done), len(store.failed), cfg.output)
        return 0
    api_key = _api_key(cfg)
    log.info(
        "%s: %d rows, %d done earlier, %d failed earlier%s, %d to do now (%s mode), £%.4f spent on this output so far",
        stage.name, len(stage.rows), len(store.done), len(store.failed),
        " (retrying them)" if cfg.retry_failed else "", len(todo), "batch" if cfg.batch else "sync", ledger.spent,
    )
    started = time.monotonic()
    try:
        stopped = asyncio.run(_execute(stage, todo, cfg, api_key, store, ledger))
    finally:
        store.close()
        ledger.close()
    ids = {r["id"] for r in stage.rows}
    summary = {
        "stage": stage.name,
        "output": str(cfg.output),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "batch" if cfg.batch else "sync",
        "rows": len(ids),
        "done": len(ids & store.done.keys()),
        "failed": len(ids & store.failed.keys()),
        "pending": len(ids - store.done.keys() - store.failed.keys()),
        "stopped": stopped,
        "seconds": round(time.monotonic() - started, 3),
        "cost": ledger.summary(),
    }
    atomic_write_json(sidecar(cfg.output, "summary", ".json"), summary)
    log.info(
        "%s: %d done, %d failed, %d pending; £%.4f this run, £%.4f in total -> %s",
        stage.name, summary["done"], summary["failed"], summary["pending"],
        ledger.spent_this_run, ledger.spent, cfg.output,
    )
    if stopped == "budget":
        log.warning("stopped by the budget (£%.4f); rerun with a higher --budget to continue", cfg.budget)
    elif stopped == "batch":
        log.warning("batch job still running; rerun the same command to resume polling it (nothing is resubmitted)")
    return EXIT_INCOMPLETE if stopped else 0
