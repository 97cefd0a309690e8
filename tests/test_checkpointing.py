"""Checkpoint files and the adapter folder: what Lightning's own save does not guarantee, and how often we write."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

import nlicot.checkpointing as checkpointing
from nlicot.args import LoRAConfig, OptimConfig, ScheduleConfig
from nlicot.checkpointing import AdapterExport, AtomicCheckpointIO
from nlicot.data import NLICoTDataModule
from nlicot.sft import NLICoTModule

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


@pytest.mark.skipif(not SHM.is_dir() or SHM.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev,
                    reason="needs a second filesystem (tmpfs /dev/shm) for $TMPDIR")
def test_interrupted_save_with_tmpdir_on_another_filesystem(tmp_path, monkeypatch):
    """$TMPDIR on tmpfs (common on clusters): Lightning's save moves its temp file by copying into the truncated
    target, so an interruption mid-copy leaves half a file; ours renames a temp file in the target's folder."""
    if tmp_path.stat().st_dev == SHM.stat().st_dev:
        pytest.skip("tmp_path is on /dev/shm itself")
    monkeypatch.setattr(tempfile, "tempdir", str(SHM))
    real_sendfile = os.sendfile

    def killed_mid_copy(out_fd, in_fd, offset, count):
        real_sendfile(out_fd, in_fd, offset, min(count, 4096))
        raise KeyboardInterrupt  # what a SIGINT / preemption does at this point

    lightning, ours = tmp_path / "lightning" / "last.ckpt", tmp_path / "ours" / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"step": 1}, lightning)
    AtomicCheckpointIO().save_checkpoint({"step": 1}, ours)
    new = {"step": 2, "weights": torch.zeros(1 << 16)}
    monkeypatch.setattr(os, "sendfile", killed_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        TorchCheckpointIO().save_checkpoint(new, lightning)
    with pytest.raises(Exception) as torn:
        torch.load(lightning, weights_only=True)
    print(f"\nLightning's save interrupted mid-copy: {lightning.stat().st_size} bytes left, "
          f"torch.load: {type(torn.value).__name__}")
    AtomicCheckpointIO().save_checkpoint(new, ours)  # never copies through $TMPDIR: the interruption point is absent
    assert torch.load(ours, weights_only=True)["step"] == 2


def test_adapter_folder_written_once_per_saved_step(tmp_path, monkeypatch):
    """``save_last`` saves ``stepN.ckpt`` and ``last.ckpt`` at the same step: one adapter write, not two."""
    written = []
    real = checkpointing.write_adapter
    monkeypatch.setattr(checkpointing, "write_adapter", lambda m, f: written.append(m.global_step) or real(m, f))
    dm = NLICoTDataModule(train_path=str(REPO / "data/demo/train.jsonl"), micro_batch_size=4)
    model = NLICoTModule("tiny", compute_dtype="float32", gradient_checkpointing=False, lora=LoRAConfig(r=4, alpha=8),
                         schedule=ScheduleConfig(warmup_steps=0), optim=OptimConfig(name="adamw"))
    saves = []

    class CountSaves(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saves.append(trainer.global_step)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_last=True, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, max_steps=2,
                        default_root_dir=tmp_path, callbacks=[ckpt, AdapterExport(), CountSaves()])
    trainer.fit(model, dm)
    assert saves == [1, 1, 2, 2]  # Lightning saves twice per step
    assert written == [1, 2]
    assert (tmp_path / "ck" / "adapter" / "adapter_config.json").is_file()
    # the adapter folder serves the training prompt: its chat template renders it, nlicot.json records it
    from transformers import AutoTokenizer

    from nlicot import prompt

    served = AutoTokenizer.from_pretrained(tmp_path / "ck" / "adapter")
    turn = [{"role": "user", "content": prompt.user_message("A cat sleeps.", "An animal rests.")}]
    assert (served.apply_chat_template(turn, add_generation_prompt=True)["input_ids"]
            == prompt.encode_prompts(model.tokenizer, ["A cat sleeps."], ["An animal rests."])[0])
    meta = json.loads((tmp_path / "ck" / "adapter" / "nlicot.json").read_text())
    assert meta["prompt"]["family"] == "mistral-v3" and meta["prompt"]["end_of_answer_token"] == "</s>"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")) == []
