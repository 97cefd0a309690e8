"""Preemption on the tiny NF4 model: a real SIGTERM to a real ``python -m nlicot fit`` between periodic checkpoints,
during validation and during the generation eval, the resumed run against an unbroken one step by step; a grace
period too short for a save.

The runs (tests/test_training.py's demo settings: 21 micro-batches of 2 rows an epoch, accumulation 2) checkpoint
every 3 optimizer steps and validate once, after step 7 (14 micro-batches), inside epoch 0, with a generation eval
of 2 rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_training import REPO, fit_cmd, scalars

from nlicot import preemption

TESTS = Path(__file__).resolve().parent
STEPS, VAL_AFTER = 10, 7
RUN = [f"--trainer.max_steps={STEPS}", "--checkpoint.every_n_train_steps=3", "--trainer.limit_val_batches=1.0",
       "--trainer.check_val_every_n_epoch=1", f"--trainer.val_check_interval={2 * VAL_AFTER}",
       "--generation_eval.rows=2", "--model.generation.max_new_tokens=64"]
ENV = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def start(root: Path, *extra: str) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    cmd = fit_cmd(root, *RUN, "--trainer.callbacks+=preempt_probe.Where",
                  f"--trainer.callbacks.out={root / 'where.jsonl'}", *extra)
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=open(root / "log", "a"),
                            text=True)


def finish(proc: subprocess.Popen, root: Path, rc: int = 0) -> str:
    assert proc.wait(timeout=600) == rc, (root / "log").read_text()[-3000:]
    return (root / "log").read_text()


def wait_until(root: Path, proc: subprocess.Popen, kind: str, at_least: int, timeout: float = 400) -> None:
    """Until the probe reports a ``kind`` ("train" / "val") batch at optimizer step >= ``at_least``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        where = root / "where.jsonl"
        lines = where.read_text().splitlines() if where.is_file() else []
        if any(json.loads(line).get(kind, -1) >= at_least for line in lines):
            return
        assert proc.poll() is None, "the run ended before the signal"
        time.sleep(0.05)
    raise TimeoutError


def saved_step(root: Path) -> int:
    return torch.load(root / "ckpt" / "last.ckpt", weights_only=False)["global_step"]


def compare(ref: dict, again: dict, first: int) -> tuple[float, float]:
    steps = list(range(first, STEPS))
    assert sorted(again["train/loss"]) == sorted(again["train/lr"]) == steps
    d_lr = max(abs(again["train/lr"][s] - ref["train/lr"][s]) for s in steps)
    d_loss = max(abs(again["train/loss"][s] - ref["train/loss"][s]) for s in steps)
    return d_lr, d_loss


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("unbroken")
    finish(start(root), root)
    ref = scalars(root)
    assert sorted(ref["val/loss"]) == sorted(ref["val/parse_rate"]) == [VAL_AFTER - 1]  # once, after step 7
    return ref


@pytest.mark.slow
def test_sigterm_between_checkpoints_saves_that_step_and_resumes_exactly(tmp_path, unbroken):
    root = tmp_path / "run"
    proc = start(root)
    wait_until(root, proc, "train", 4)  # past the periodic checkpoint of step 3, before that of step 6
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # a second one (impatient orchestrators): changes nothing
    log = finish(proc, root, rc=143)
    step = saved_step(root)
    assert 4 <= step < 6 and f"at optimizer step {step}" in log and "Traceback" not in log
    assert sorted(p.name for p in (root / "ckpt").glob("*.ckpt")) == ["last.ckpt", "step000003.ckpt"]
    assert not [p for p in (root / "ckpt").iterdir() if p.name.startswith(".")]  # no temp file left
    assert json.loads((root / "ckpt" / "adapter" / "nlicot.json").read_text())["global_step"] == step

    finish(start(root, "--ckpt_path=last"), root)
    again = scalars(root)
    d_lr, d_loss = compare(unbroken, again, step)
    print(f"\nSIGTERM between checkpoints, saved at step {step} (periodic at 3): max |dLR| = {d_lr:.3g}, "
          f"max |dloss| = {d_loss:.3g} over steps {step}..{STEPS - 1}")
    assert d_lr == 0.0 and d_loss <= 1e-6
    assert again["val/loss"] == unbroken["val/loss"]  # the validation after step 7 ran as in the unbroken run


@pytest.mark.slow
def test_sigterm_during_validation_replays_it_on_resume(tmp_path, unbroken):
    root = tmp_path / "run"
    proc = start(root, "--trainer.callbacks.pause=3")
    wait_until(root, proc, "val", VAL_AFTER)
    proc.send_signal(signal.SIGTERM)
    log = finish(proc, root, rc=143)
    assert saved_step(root) == VAL_AFTER and "validation of this step replays on resume" in log
    assert "val/loss" not in scalars(root)  # the stopped run never finished that validation

    finish(start(root, "--ckpt_path=last"), root)
    again = scalars(root)
    d_lr, d_loss = compare(unbroken, again, VAL_AFTER)
    d_val = abs(again["val/loss"][VAL_AFTER - 1] - unbroken["val/loss"][VAL_AFTER - 1])
    print(f"\nSIGTERM during validation after step {VAL_AFTER}: max |dLR| = {d_lr:.3g}, max |dloss| = {d_loss:.3g} "
          f"over steps {VAL_AFTER}..{STEPS - 1}; replayed val/loss |d| = {d_val:.3g}")
    assert sorted(again["val/loss"]) == [VAL_AFTER - 1]  # replayed once, logged at the unbroken run's step
    assert d_lr == 0.0 and d_loss <= 1e-6 and d_val <= 1e-6


@pytest.mark.slow
def test_sigterm_during_generation_eval_replays_validation_on_resume(tmp_path, unbroken):
    root = tmp_path / "run"
    proc = start(root)
    wait_until(root, proc, "gen", VAL_AFTER)  # validation's batches are done; generating for 2 rows
    proc.send_signal(signal.SIGTERM)
    log = finish(proc, root, rc=143)
    assert '"val_end"' not in (root / "where.jsonl").read_text()  # it landed before validation ended
    assert saved_step(root) == VAL_AFTER and "validation of this step replays on resume" in log

    finish(start(root, "--ckpt_path=last"), root)
    again = scalars(root)
    d_lr, d_loss = compare(unbroken, again, VAL_AFTER)
    d_gen = max(abs(again[t][VAL_AFTER - 1] - unbroken[t][VAL_AFTER - 1]) for t in ("val/loss", "val/parse_rate"))
    print(f"\nSIGTERM during the generation eval after step {VAL_AFTER}: max |dLR| = {d_lr:.3g}, "
          f"max |dloss| = {d_loss:.3g}; replayed val/loss, val/parse_rate |d| = {d_gen:.3g}")
    assert d_lr == 0.0 and d_loss <= 1e-6 and d_gen <= 1e-6


@pytest.mark.slow
def test_grace_period_too_short_keeps_the_previous_checkpoint(tmp_path):
    root = tmp_path / "run"
    proc = start(root, "--preemption.grace_period=0")
    wait_until(root, proc, "train", 4)  # after the periodic checkpoint of step 3, whose write time is known
    before = (root / "ckpt" / "last.ckpt").read_bytes()
    proc.send_signal(signal.SIGTERM)
    log = finish(proc, root, rc=143)
    assert "grace period is too short to save" in log and "last periodic checkpoint (step 3)" in log
    assert (root / "ckpt" / "last.ckpt").read_bytes() == before


# ---------------------------------------------------------------- in process


def test_restart_validation_marks_the_running_validation_as_just_started():
    """Lightning resumes mid-evaluation when val progress shows one batch started and none processed."""
    progress = {"total": {"ready": 14, "started": 14, "processed": 13, "completed": 13},
                "current": {"ready": 5, "started": 5, "processed": 4, "completed": 4}, "is_last_batch": False}
    checkpoint = {"loops": {"fit_loop": {"epoch_loop.val_loop.batch_progress": progress}}}
    preemption.restart_validation(checkpoint)
    assert progress["total"] == {"ready": 10, "started": 10, "processed": 9, "completed": 9}
    assert progress["current"] == {"ready": 1, "started": 1, "processed": 0, "completed": 0}
