"""`python -m nlicot` as a user drives it: one flag places a whole run, `--ckpt_path last` finds it again and keeps
the checkpoint's architecture, predict adds no TensorBoard version, a misfit checkpoint is one `error:` line, and a
SIGTERM'd fit exits non-zero."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--data.micro_batch_size=2", "--trainer.accumulate_grad_batches=2", "--trainer.limit_val_batches=0",
         "--checkpoint.every_n_train_steps=2", "--model.schedule.warmup_steps=1", "--trainer.enable_progress_bar=false"]


def nlicot(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nlicot", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """A 2-step demo run placed with nothing but --trainer.default_root_dir."""
    root = tmp_path_factory.mktemp("runs")
    nlicot("fit", "--config", "configs/demo.yaml", *QUICK, "--trainer.max_steps=2", f"--trainer.default_root_dir={root}")
    return root


def versions(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("version_*"))


def test_default_root_dir_holds_the_run_and_last_resumes_it_with_the_checkpoints_lora_shape(run_root):
    run = run_root / "demo"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "adapter").is_dir()
    assert versions(run) == ["version_0"]
    # `last` is resolved inside the run folder, and the checkpoint's LoRA shape wins over a different flag
    rank = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["lora"]["r"]
    assert rank != 8
    nlicot("fit", "--config", "configs/demo.yaml", *QUICK, "--trainer.max_steps=4", "--model.lora.r=8",
           f"--trainer.default_root_dir={run_root}", "--ckpt_path=last")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and state["hyper_parameters"]["lora"]["r"] == rank
    assert versions(run) == ["version_0", "version_1"]


def test_predict_from_last_writes_into_the_run_and_starts_no_tensorboard_version(run_root, tmp_path):
    run = run_root / "demo"
    before = versions(run)
    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text('{"id": "p1", "premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 1}\n')
    nlicot("predict", "--config", "configs/demo.yaml", "--ckpt_path=last", f"--trainer.default_root_dir={run_root}",
           f"--data.predict_path={inputs}", "--model.generation.max_new_tokens=4", "--trainer.enable_progress_bar=false")
    assert (run / "predictions" / "predictions.jsonl").is_file()
    assert (run / "predictions" / "config.yaml").is_file() and not (run_root / "config.yaml").exists()
    assert versions(run) == before


def test_checkpoint_whose_adapter_does_not_fit_is_one_error_line(run_root, tmp_path):
    """A checkpoint that does not record its LoRA shape (another tool, an older nlicot) and a model of another
    rank: the adapter tensors cannot be loaded; say so in one line."""
    state = torch.load(run_root / "demo" / "checkpoints" / "last.ckpt", weights_only=True)
    state["hyper_parameters"].pop("lora")
    foreign = tmp_path / "foreign.ckpt"
    torch.save(state, foreign)
    proc = nlicot("validate", "--config", "configs/demo.yaml", f"--ckpt_path={foreign}", "--model.lora.r=4",
                  f"--trainer.default_root_dir={tmp_path}", "--trainer.limit_val_batches=1",
                  "--trainer.enable_progress_bar=false", ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.lora.r" in errors[0], proc.stderr[-3000:]


def test_sigterm_stops_fit_with_a_non_zero_status_and_a_resumable_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "nlicot", "fit", "--config", "configs/demo.yaml", *QUICK,
           "--trainer.max_steps=200", f"--trainer.default_root_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt_dir = tmp_path / "demo" / "checkpoints"
    deadline = time.time() + 300
    while not list(ckpt_dir.glob("step*.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "fit ended before it could be stopped"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "error: stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] < 200


@pytest.mark.parametrize(
    ("flag", "key"),
    [("--model.optim.name=foo", 'Parser key "model.optim.name"'),  # a Literal inside subclass-mode model: 10 lines before
     ("--trainer.max_steps=abc", 'Parser key "trainer.max_steps"')],
)
def test_a_bad_flag_value_is_one_error_line_naming_the_key_without_the_usage_screen(flag, key):
    proc = nlicot("fit", "--config", "configs/demo.yaml", flag, ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0] and flag.split("=")[1] in errors[0], proc.stderr
    assert len(lines) <= 3 and "usage:" not in proc.stderr, proc.stderr  # the error and a --help tip
