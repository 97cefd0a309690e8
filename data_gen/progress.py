"""Progress display: rows done / failed, rows per second, ETA and GBP spent so far.

On a terminal it is a live ``rich`` bar on stderr; elsewhere (CI, logs, a test's pipe) one log line every
``every_s`` seconds and one at the end, so a long unattended run still shows where it is and what it cost.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data_gen.ledger import Ledger

log = logging.getLogger(__name__)


class RowProgress:
    """Counts finished rows; ``advance`` after each one."""

    def __init__(self, stage: str, total: int, ledger: Ledger, quiet: bool = False, every_s: float = 10.0) -> None:
        self.stage, self.total, self.ledger = stage, total, ledger
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
                TextColumn("{task.fields[rate]:.1f} rows/s"),
                TimeRemainingColumn(),
                TextColumn("£{task.fields[gbp]:.4f}"),
                TextColumn("failed {task.fields[failed]}"),
                console=console,
            )
            self._task = self._bar.add_task(stage, total=total, rate=0.0, gbp=ledger.spent, failed=0)

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
    def rate(self) -> float:
        return (self.done + self.failed) / max(1e-9, time.monotonic() - self._start)

    def advance(self, failed: bool = False) -> None:
        if failed:
            self.failed += 1
        else:
            self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=self.rate, gbp=self.ledger.spent, failed=self.failed)
        elif not self._quiet and time.monotonic() - self._last_log >= self._every_s:
            self._log()

    def _log(self) -> None:
        self._last_log = time.monotonic()
        finished = self.done + self.failed
        left = self.total - finished
        eta = f"{left / self.rate:.0f}s" if self.rate > 0 and left else "-"
        log.info(
            "%s: %d/%d rows (%d failed), %.1f rows/s, ETA %s, £%.4f spent",
            self.stage, finished, self.total, self.failed, self.rate, eta, self.ledger.spent,
        )
