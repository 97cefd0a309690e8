"""Batch mode: the same row workflows, answered through the Mistral Batch API at the batch price.

One *round* sends the pending request of every active row: a JSONL file per model is uploaded, a job created
and polled, its output (and error) file downloaded and merged; rows that need another request (a re-prompt, a
score rewrite) or whose request failed go into the next round.

Crash safety: ``<stem>.batch.json`` (written atomically) holds the replies each active row has had so far and the
jobs of the current round. It is saved *before* a job is created, with a random tag that is also put in the
job's metadata, so a rerun after a crash at any point finds and resumes the same job instead of paying for a
second one. Rows are rebuilt by replaying their saved replies (those of ``batch.json``, else the ones a killed
request-by-request run journalled); ledger lines carry ``job:custom_id`` keys, so a
re-merged output is never charged twice, and done rows are never written twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_gen.client import TERMINAL_JOB_STATES, MistralClient, text_of
from data_gen.config import ApiStageConfig
from data_gen.errors import BudgetExhausted, InputError, RowFailed
from data_gen.progress import RowProgress
from data_gen.row_workflow import ApiStage, ChatRequest, Reply, Workflow, replay
from data_gen.store import (
    Record,
    RowStore,
    atomic_write_json,
    done_record,
    failed_record,
    sidecar,
)

log = logging.getLogger(__name__)


@dataclass
class _Row:
    row: Record
    workflow: Workflow
    replies: list[Reply] = field(default_factory=list)
    errors: int = 0
    request: ChatRequest | None = None


def parse_results(data: bytes, where: str) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """``custom_id -> (reply fields, None)`` for answered requests, ``(None, error)`` for failed ones."""
    results: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable result line skipped", where, n)
            continue
        response = obj.get("response") or {}
        body = response.get("body")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except json.JSONDecodeError:
                pass
        custom_id = str(obj.get("custom_id"))
        if response.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
            usage = body.get("usage") or {}
            message = body["choices"][0].get("message") or {}
            results[custom_id] = (
                {"text": text_of(message.get("content")), "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                 "completion_tokens": int(usage.get("completion_tokens") or 0)},
                None,
            )
        else:
            error = obj.get("error") or body or f"status {response.get('status_code')}"
            results[custom_id] = (None, json.dumps(error)[:300] if not isinstance(error, str) else error[:300])
    return results


class _BatchRun:
    def __init__(self, stage: ApiStage, cfg: ApiStageConfig, client: MistralClient, store: RowStore) -> None:
        self.stage, self.cfg, self.client, self.store = stage, cfg, client, store
        self.ledger = client.ledger
        assert cfg.output is not None
        self.path: Path = sidecar(cfg.output, "batch", ".json")
        self.active: dict[str, _Row] = {}
        self.jobs: list[dict[str, Any]] = []
        self.reserved: dict[str, float] = {}
        self.stop: str | None = None
        self.progress: RowProgress | None = None

    # --- state ---

    def load(self, todo: list[Record], journalled: dict[str, list[Reply]]) -> None:
        """Rows from a crashed run first (rebuilt by replay), then the new pending rows."""
        state: dict[str, Any] = {}
        if self.path.exists():
            try:
                state = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"{self.path}: unreadable batch state ({e}); it lists jobs in flight, check them before deleting it") from None
            if state.get("stage") != self.stage.name:
                raise InputError(f"{self.path}: batch state of stage {state.get('stage')!r}, not {self.stage.name!r}")
            log.info("resuming batch state %s: %d rows, %d jobs", self.path, len(state["rows"]), len(state["jobs"]))
        by_id = {r["id"]: r for r in self.stage.rows}
        saved: dict[str, Any] = state.get("rows", {})
        self.jobs = state.get("jobs", [])
        order = [i for i in saved if i in by_id and i not in self.store.done]
        order += [r["id"] for r in todo if r["id"] not in saved]
        for rid in order:
            item = _Row(by_id[rid], self.stage.workflow(by_id[rid]), errors=saved.get(rid, {}).get("errors", 0))
            if rid in saved:
                item.replies = [Reply.from_json(fields) for fields in saved[rid].get("replies", [])]
            else:
                item.replies = list(journalled.get(rid, ()))
            self.active[rid] = item
            self._advance(item, lambda: replay(item.workflow, item.replies))

    def save(self) -> None:
        rows = {rid: {"replies": [r.to_json() for r in item.replies], "errors": item.errors} for rid, item in self.active.items()}
        atomic_write_json(self.path, {"stage": self.stage.name, "rows": rows, "jobs": self.jobs})

    # --- row steps ---

    def _advance(self, item: _Row, step: Callable[[], ChatRequest]) -> bool:
        """One workflow step; a row that ends is written and leaves ``active``. True while it has a request."""
        rid = item.row["id"]
        try:
            item.request = step()
            return True
        except StopIteration as finished:
            usage = self.ledger.usage_of(item.replies, batch=True)
            self.store.write_done(done_record(item.row, finished.value, usage))
            if self.progress:
                self.progress.advance()
        except RowFailed as e:
            self._fail(item, str(e))
        except BudgetExhausted:
            pass  # left pending for a later run
        self.active.pop(rid, None)
        return False

    def _fail(self, item: _Row, reason: str) -> None:
        usage = self.ledger.usage_of(item.replies, batch=True)
        self.store.write_failed(failed_record(item.row, self.client.scrub(reason), usage))
        self.active.pop(item.row["id"], None)
        if self.progress:
            self.progress.advance(failed=True)

    # --- rounds ---

    async def submit(self) -> None:
        """Upload and start one job per model for every active row's request that fits the budget."""
        by_model: dict[str, list[str]] = {}
        for rid, item in list(self.active.items()):
            assert item.request is not None
            bound = self.ledger.bound(item.request.model, item.request.messages, item.request.max_tokens, batch=True)
            try:
                self.ledger.reserve(bound)
            except BudgetExhausted as e:
                if not self.stop:
                    log.warning("%s; submitting what fits", e)
                self.stop = "budget"
                # A workflow may end with what it has (score keeps its best thought); otherwise the row is left
                # pending and starts afresh in a later run. No new request is sent either way.
                self._advance(item, lambda: item.workflow.throw(e))  # noqa: F821 - called at once, e is bound
                self.active.pop(rid, None)
                continue
            self.reserved[rid] = bound
            by_model.setdefault(item.request.model, []).append(rid)
        for model, ids in by_model.items():
            job: dict[str, Any] = {"tag": uuid.uuid4().hex, "since": time.time(), "model": model, "ids": ids, "job_id": None}
            lines = "".join(json.dumps({"custom_id": rid, "body": self.active[rid].request.body()}) + "\n" for rid in ids)
            job["file_id"] = await self.client.upload_batch_file(f"{self.stage.name}-{job['tag']}.jsonl", lines.encode())
            self.jobs.append(job)
            self.save()  # the tag is on disk before the job can exist
            created = await self.client.create_job(
                file_id=job["file_id"], model=model, tag=job["tag"], since=job["since"], timeout_hours=self.cfg.batch_timeout_hours
            )
            job["job_id"] = created.id
            self.save()
            log.info("%s: batch job %s started for %d requests to %s", self.stage.name, created.id, len(ids), model)

    async def reattach(self) -> None:
        """Jobs saved without an id (crash around creation): find them by tag, or let their rows be resubmitted."""
        for job in list(self.jobs):
            if job["job_id"] is None:
                found = await self.client.find_job(job["tag"], job["since"])
                if found is None:
                    self.jobs.remove(job)
                else:
                    job["job_id"] = found.id
        self.save()

    async def wait(self) -> bool:
        """Poll until every job has ended; False if ``batch_max_wait_s`` ran out first (state is saved)."""
        deadline = None if self.cfg.batch_max_wait_s is None else time.monotonic() + self.cfg.batch_max_wait_s
        while True:
            for job in self.jobs:
                if job.get("status") in TERMINAL_JOB_STATES:
                    continue
                got = await self.client.get_job(job["job_id"])
                job.update(status=str(got.status), output_file=got.output_file or None, error_file=got.error_file or None)
                log.info("batch job %s: %s, %d/%d requests done", got.id, got.status, got.completed_requests, got.total_requests)
            if all(job.get("status") in TERMINAL_JOB_STATES for job in self.jobs):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                self.save()
                return False
            await asyncio.sleep(self.cfg.batch_poll_s)

    async def merge(self, job: dict[str, Any]) -> None:
        results: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
        for file_id in (job.get("error_file"), job.get("output_file")):  # an answer beats an error for the same id
            if file_id:
                results.update(parse_results(await self.client.download(file_id), f"batch file {file_id}"))
        missing = (None, f"no result in job {job['job_id']} (ended {job.get('status')})")
        for rid in job["ids"]:
            item = self.active.get(rid)
            if item is None:
                continue  # merged before a crash
            self.ledger.release(self.reserved.pop(rid, 0.0))
            fields, error = results.get(rid, missing)
            if fields is None:
                item.errors += 1
                if item.errors > self.cfg.max_retries:
                    self._fail(item, f"batch request failed {item.errors} times; last: {error}")
                continue
            reply = Reply(model=job["model"], **fields)
            key = f"{job['job_id']}:{rid}"
            if not self.ledger.charged(key):
                self.ledger.charge(job["model"], reply.prompt_tokens, reply.completion_tokens, batch=True, row_id=rid, key=key)
            item.replies.append(reply)
            self._advance(item, lambda: item.workflow.send(reply))

    async def run(self, todo: list[Record], journalled: dict[str, list[Reply]]) -> str | None:
        self.load(todo, journalled)
        with RowProgress(self.stage.name, len(self.active), self.ledger, quiet=self.cfg.quiet) as self.progress:
            if self.jobs:
                await self.reattach()
            while self.active or self.jobs:
                if not self.jobs:
                    await self.submit()
                    if not self.jobs:
                        break
                if not await self.wait():
                    return "batch"
                for job in self.jobs:
                    await self.merge(job)
                self.jobs = []
                self.save()
        self.path.unlink(missing_ok=True)  # every row ended or was left pending by the budget
        return self.stop


async def run_batch(stage: ApiStage, todo: list[Record], cfg: ApiStageConfig, client: MistralClient, store: RowStore,
                    journalled: dict[str, list[Reply]]) -> str | None:
    """Run ``todo`` through the Batch API; ``journalled`` are replies a killed request-by-request run saved."""
    return await _BatchRun(stage, cfg, client, store).run(todo, journalled)
