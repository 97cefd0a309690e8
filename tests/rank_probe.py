"""Test-only callback that records, per rank, what a ``python -m nlicot fit`` process trained on and wrote.

Passed to a real fit run as ``--trainer.callbacks+=rank_probe.RankProbe`` (``tests/`` on ``PYTHONPATH``), so the
DDP test can check from outside that ranks saw disjoint rows and that only rank 0 wrote checkpoints. It observes
and never changes training: the checkpoint writer is wrapped only to note who called it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L

from nlicot.packing import IGNORE_INDEX


def row_digest(ids: list[int], pad_id: int) -> str:
    """Identity of a packed row independent of the batch's padding width (trailing pad tokens dropped)."""
    end = len(ids)
    while end and ids[end - 1] == pad_id:
        end -= 1
    return hashlib.sha1(json.dumps(ids[:end]).encode()).hexdigest()[:16]


class RankProbe(L.Callback):
    """Appends one JSON line per training micro-batch and per checkpoint write to ``<out>/rank<N>.jsonl``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def _write(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record | {"world_size": trainer.world_size}) + "\n")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def noted_save(checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            self._write(trainer, {"saved": Path(path).name})
            save(checkpoint, path, storage_options)

        io.save_checkpoint = noted_save

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        pad = pl_module.tokenizer.pad_token_id
        rows = [row_digest(ids, pad) for ids in batch["input_ids"].tolist()]
        self._write(trainer, {"step": trainer.global_step, "rows": rows,
                              "label_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())})
