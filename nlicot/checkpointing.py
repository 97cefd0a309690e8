"""Checkpoints that survive a crash mid-write, and a PEFT adapter folder beside them that loads without nlicot."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nlicot import prompt
from nlicot.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    Lightning writes checkpoints in place, so a kill during the write of ``last.ckpt`` would destroy the
    only resumable state. Here the old file stays whole until the new one is complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote filesystems: no rename semantics to lean on
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def write_adapter(pl_module: L.LightningModule, folder: Path) -> None:
    """A self-describing PEFT adapter folder: ``PeftModel.from_pretrained(base, folder)`` loads it, and
    ``nlicot.json`` records the base model, the hyperparameters and the prompt template it was trained with."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pl_module.model.save_pretrained(tmp)
        pl_module.tokenizer.save_pretrained(tmp)
        meta = {
            "base_model": pl_module.hparams.model_name_or_path,
            "hyperparameters": {k: v for k, v in pl_module.hparams.items()},
            "prompt": {"instruction": prompt.INSTRUCTION, "user_template": prompt.USER_TEMPLATE,
                       "fingerprint": prompt.template_fingerprint()},
            "global_step": pl_module.global_step,
        }
        (tmp / "nlicot.json").write_text(json.dumps(meta, indent=2, default=str))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class AdapterExport(L.Callback):
    """Keep ``<checkpoint dir>/adapter`` in step with the newest checkpoint (rank zero only)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.is_global_zero and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            write_adapter(pl_module, Path(trainer.checkpoint_callback.dirpath) / "adapter")
