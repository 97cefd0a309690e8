"""Test-only callback for the preemption tests: tells the test from outside where a real ``fit`` process is.

Passed as ``--trainer.callbacks+=preempt_probe.Where`` (``tests/`` on ``PYTHONPATH``). It appends a line per
training micro-batch and per validation batch, and at the end of validation's batches (where the generation
eval starts: this callback runs before it) and of the whole validation, to ``<out>`` (flushed, so the test can poll it) and can hold each
validation batch for ``pause`` seconds, so that a signal sent by the test lands inside validation. It never
changes what is trained: no random draws, no state.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class Where(L.Callback):
    def __init__(self, out: str, pause: float = 0.0) -> None:
        self.out = Path(out)
        self.pause = pause

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        self._write({"train": trainer.global_step})

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self._write({"val": trainer.global_step, "batch": batch_idx})
        time.sleep(self.pause)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write({"gen": trainer.global_step})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write({"val_end": trainer.global_step})
