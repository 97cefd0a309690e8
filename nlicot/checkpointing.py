"""Checkpoints that survive a crash mid-write, and a PEFT adapter folder beside them that loads without nlicot."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nlicot import prompt
from nlicot.atomic import atomic_dir, atomic_write
from nlicot.packing import ResumeMismatchError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    Lightning (2.6, through fsspec) writes to a temp file in ``$TMPDIR`` and then *moves* it: when ``$TMPDIR``
    is another filesystem (tmpfs, a node-local scratch disk) the move is a copy into the truncated target, so a
    kill during it destroys the only resumable state (tested). Here the temp file sits beside the target, is
    fsync'd and renamed: the old file stays whole until the new one is complete. ``last_save_seconds`` (the
    newest write's duration) tells a preemption save whether it fits in the grace period (nlicot/preemption.py).
    """

    last_save_seconds: float | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        start = time.monotonic()
        if "://" in str(path):  # remote filesystems: no rename semantics to lean on
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            atomic_write(path, lambda f: torch.save(checkpoint, f))
        self.last_save_seconds = time.monotonic() - start


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


def resume_accumulation(saved: dict[str, int], rows_per_micro_step: int, accumulate: int, allow_change: bool) -> int:
    """The ``accumulate_grad_batches`` that continues a checkpoint with ``rows_per_micro_step`` rows per global
    micro-batch (micro_batch_size x devices): the one that keeps the checkpoint's rows per optimizer step, else
    (``allow_change``) the run's own. ``saved`` is the sampler's state (``PackBatchSampler.state_dict``)."""
    step, micro = saved["rows_per_step"], saved["rows_per_micro_step"]
    if rows_per_micro_step * accumulate == step:
        return accumulate
    keeps = step // rows_per_micro_step if step % rows_per_micro_step == 0 else None
    if allow_change or keeps is None:
        now = rows_per_micro_step * accumulate
        change = (f"the checkpoint trained {step} rows per optimizer step ({micro} per global micro-batch x "
                  f"{step // micro}); this run's micro_batch_size x devices = {rows_per_micro_step} rows")
        if not allow_change:
            raise ResumeMismatchError(
                f"{change} cannot make {step} with a whole trainer.accumulate_grad_batches. Resume with a "
                f"micro_batch_size x devices that divides {step}, or pass --resume.allow_global_batch_change=true "
                f"to continue with {rows_per_micro_step} x {accumulate} = {now} rows per step"
            )
        log.warning("resume: %s x accumulate %d = %d rows per optimizer step from here (allowed by "
                    "--resume.allow_global_batch_change): the LR schedule continues by step, the sample order by "
                    "row; the loss and gradient per step now average %d rows instead of %d", change, accumulate,
                    now, now, step)
        return accumulate
    log.warning("resume: %d rows per optimizer step kept on the new layout (%d -> %d rows per global micro-batch): "
                "trainer.accumulate_grad_batches %d -> %d", step, micro, rows_per_micro_step, accumulate, keeps)
    return keeps


class ResumeLayout(L.Callback):
    """Resume a checkpoint on another number of devices or another micro-batch (registered by the CLI).

    The sampler converts its position through rows (``PackBatchSampler.load_state_dict``); Lightning's own loop
    counts micro-batches, so here, before any loop or loader exists, its per-epoch batch counters are converted to
    this run's micro-batches and ``accumulate_grad_batches`` is set so that an optimizer step trains on the same
    rows as in the saved run (see :func:`resume_accumulation`). Then the global order of rows, every step's rows,
    the step counter and the LR schedule continue unchanged.
    """

    def __init__(self, allow_global_batch_change: bool = False) -> None:
        """
        Args:
            allow_global_batch_change: resume even when this run's micro_batch_size x devices cannot make the
                checkpoint's rows per optimizer step: keep this run's accumulate_grad_batches (the schedule and
                the sample order continue; each step then averages another number of rows).
        """
        self.allow_global_batch_change = allow_global_batch_change

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        datamodule = trainer.datamodule
        saved = checkpoint.get(type(datamodule).__qualname__, {}).get("train_position") if datamodule else None
        if not saved or "rows_per_step" not in saved or trainer.state.fn != "fit":
            return  # nothing to convert (a checkpoint without the layout resumes only on its own: the sampler checks)
        rows_per_micro_step = datamodule.hparams.micro_batch_size * trainer.world_size
        trainer.accumulate_grad_batches = resume_accumulation(
            saved, rows_per_micro_step, trainer.accumulate_grad_batches, self.allow_global_batch_change)
        rows = saved["position"] * saved["rows_per_micro_step"]
        if rows % rows_per_micro_step:
            raise ResumeMismatchError(
                f"the checkpoint stopped after {rows} rows of epoch {saved['epoch']}, which is no whole number of "
                f"this run's global micro-batches of {rows_per_micro_step} rows (micro_batch_size x devices)"
            )
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        shift = rows // rows_per_micro_step - saved["position"]
        for counters in (progress["current"], progress["total"]):
            for key in counters:
                counters[key] += shift
