"""Progress display: rows done / failed, rows per second (seconds per row when slower), ETA and GBP spent so far.

On a terminal it is a live ``rich`` bar on stderr; elsewhere (CI, logs, a test's pipe) one log line every
``every_s`` seconds and one at the end, so a long unattended run still shows where it is and what it cost.
Inside ``python -m data_gen run`` (:func:`pipeline_step`) it also names the step (``reflect 2/4``) and counts the
GBP the earlier stages' ledgers recorded, so the £ shown is the whole pipeline's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data_gen.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineStep:
    """Where a stage stands in the pipeline, and what the other stages have spent."""

    index: int
    total: int
    spent_elsewhere: float


_step: ContextVar[PipelineStep | None] = ContextVar("pipeline_step", default=None)


@contextmanager
def pipeline_step(index: int, total: int, spent_elsewhere: float) -> Iterator[None]:
    """Every progress display opened inside shows ``stage index/total`` and the pipeline's GBP."""
    token = _step.set(PipelineStep(index, total, spent_elsewhere))
    try:
        yield
    finally:
        _step.reset(token)


class RowProgress:
    """Counts finished rows; ``advance`` after each one."""

    def __init__(self, stage: str, total: int, ledger: Ledger, quiet: bool = False, every_s: float = 10.0) -> None:
        step = _step.get()
        self.stage = f"{stage} {step.index}/{step.total}" if step else stage
        self.total, self.ledger = total, ledger
        self._spent_elsewhere = step.spent_elsewhere if step else 0.0
        self.done = self.failed = 0
        self._start = time.monotonic()
        self._quiet, self._every_s = quiet, every_s
        self._last_log = self._start
        console = Console(stderr=True)
        self._bar: Progress | None = None
        if not quiet and console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
                TextColumn("£{task.fields[gbp]:.4f}"),
                TextColumn("failed {task.fields[failed]}"),
                console=console,
            )
            self._task = self._bar.add_task(self.stage, total=total, speed=self.speed, gbp=self.spent, failed=0)

    def __enter__(self) -> RowProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif not self._quiet:
            self._log()

    @property
    def spent(self) -> float:
        """GBP so far: this stage's output, plus the other stages' in a pipeline."""
        return self._spent_elsewhere + self.ledger.spent

    @property
    def rate(self) -> float:
        return (self.done + self.failed) / max(1e-9, time.monotonic() - self._start)

    @property
    def speed(self) -> str:
        """``12.3 rows/s``, or ``35.2 s/row`` below one row a second (a local model: "0.0 rows/s" says nothing)."""
        rate = self.rate
        if rate >= 1:
            return f"{rate:.1f} rows/s"
        return f"{1 / rate:.1f} s/row" if rate > 0 else "- s/row"

    def advance(self, failed: bool = False) -> None:
        if failed:
            self.failed += 1
        else:
            self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, speed=self.speed, gbp=self.spent, failed=self.failed)
        elif not self._quiet and time.monotonic() - self._last_log >= self._every_s:
            self._log()

    def _log(self) -> None:
        self._last_log = time.monotonic()
        finished = self.done + self.failed
        left = self.total - finished
        eta = f"{left / self.rate:.0f}s" if self.rate > 0 and left else "-"
        log.info(
            "%s: %d/%d rows (%d failed), %s, ETA %s, £%.4f spent",
            self.stage, finished, self.total, self.failed, self.speed, eta, self.spent,
        )
