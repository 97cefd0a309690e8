"""Checkpoints that survive a crash mid-write, and a PEFT adapter folder beside them that loads without nlicot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nlicot import prompt
from nlicot.atomic import atomic_dir, atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    Lightning (2.6, through fsspec) writes to a temp file in ``$TMPDIR`` and then *moves* it: when ``$TMPDIR``
    is another filesystem (tmpfs, a node-local scratch disk) the move is a copy into the truncated target, so a
    kill during it destroys the only resumable state (tested). Here the temp file sits beside the target, is
    fsync'd and renamed: the old file stays whole until the new one is complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote filesystems: no rename semantics to lean on
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def write_adapter(pl_module: L.LightningModule, folder: Path) -> None:
    """A self-describing PEFT adapter folder: ``PeftModel.from_pretrained(base, folder)`` loads it, its tokenizer's
    chat template renders the training prompt, and ``nlicot.json`` records the base model, the hyperparameters and
    the prompt it was trained with."""
    with atomic_dir(folder, replace=True) as tmp:
        pl_module.model.save_pretrained(tmp)
        prompt.save_tokenizer(pl_module.tokenizer, tmp)
        meta = {
            "base_model": pl_module.hparams.model_name_or_path,
            "hyperparameters": {k: v for k, v in pl_module.hparams.items()},
            "prompt": prompt.record(pl_module.tokenizer),
            "global_step": pl_module.global_step,
        }
        (tmp / "nlicot.json").write_text(json.dumps(meta, indent=2, default=str))


class AdapterExport(L.Callback):
    """Keep ``<checkpoint dir>/adapter`` in step with the newest checkpoint (rank zero only).

    ``save_last`` saves twice at one step (``stepN.ckpt`` and ``last.ckpt``) with the same weights; the
    folder is written once per optimizer step.
    """

    def __init__(self) -> None:
        self._written_step: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        callback = trainer.checkpoint_callback
        if not (trainer.is_global_zero and callback is not None and callback.dirpath):
            return
        if self._written_step == trainer.global_step:
            return
        write_adapter(pl_module, Path(callback.dirpath) / "adapter")
        self._written_step = trainer.global_step
