"""The label-only recipe end to end on the offline ``tiny-nli`` base: configs/sft_fraction.yaml (SFT on the 10 % of
rows that keep a thought), then configs/grpo_labels.yaml (GRPO on the label-only 90 %), each a few steps and
resumed; a resume whose adapter at ``adapter_path`` changed is refused with one error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--trainer.limit_val_batches=0", "--generation_eval.rows=0", "--trainer.enable_progress_bar=false"]
GRPO_FAST = ["--model.generation.max_new_tokens=24", "--model.grpo.brevity_free_tokens=8", "--model.grpo.num_generations=4",
             "--data.micro_batch_size=2", "--checkpoint.every_n_train_steps=2", "--model.schedule.warmup_steps=1",
             "--model.optim.learning_rate=1e-2", "--model.grpo.max_refills=2"]


def fit(config: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nlicot", "fit", "--config", str(REPO / "configs" / config), *QUICK,
           f"--trainer.default_root_dir={root}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)


def scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for version in sorted(run.glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        acc = EventAccumulator(str(version))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


@pytest.mark.slow
def test_sft_on_the_fraction_then_grpo_on_the_labels_both_resume(tmp_path) -> None:
    sft = fit("sft_fraction.yaml", tmp_path, "--trainer.max_steps=2", "--checkpoint.every_n_train_steps=2")
    assert sft.returncode == 0, sft.stderr[-3000:]
    # the data report: 10 % of data/synth's 3000 train rows keep their thought, SFT trains on those only
    assert "train: 300 examples" in sft.stderr and "(300 with a thought, 2700 label-only; dropped: " \
        "{'over_max_length': 0, 'label_only': 2700})" in sft.stderr, sft.stderr[-3000:]
    sft = fit("sft_fraction.yaml", tmp_path, "--trainer.max_steps=3", "--checkpoint.every_n_train_steps=2",
              "--ckpt_path=last")
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert sorted(scalars(tmp_path / "sft_fraction")["train/lr"]) == [0, 1, 2]
    adapter = tmp_path / "sft_fraction" / "checkpoints" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()

    start = tmp_path / "start"  # a copy GRPO starts from, so that the test below can change it
    start.mkdir()
    for f in adapter.iterdir():
        (start / f.name).write_bytes(f.read_bytes())
    grpo = [*GRPO_FAST, f"--model.init_args.adapter_path={start}"]
    run = fit("grpo_labels.yaml", tmp_path, *grpo, "--trainer.max_steps=4",
              f"--checkpoint.dirpath={tmp_path / 'grpo_labels' / 'checkpoints'}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train: 2700 examples" in run.stderr and "dropped: {'over_max_length': 0, 'with_thought': 300}" in run.stderr
    run = fit("grpo_labels.yaml", tmp_path, *grpo, "--trainer.max_steps=6", "--ckpt_path=last",
              f"--checkpoint.dirpath={tmp_path / 'grpo_labels' / 'checkpoints'}")
    assert run.returncode == 0, run.stderr[-3000:]
    logged = scalars(tmp_path / "grpo_labels")
    for tag in ("train/lr", "grpo/reward", "grpo/flat_groups", "grpo/refills", "grpo/kl"):
        assert sorted(logged[tag]) == list(range(6)), tag
    assert all(0 <= v <= 2 for v in logged["grpo/refills"].values())  # at most max_refills rounds per micro-batch
    assert all(0 <= v <= 1 for v in logged["grpo/flat_groups"].values())

    weights = load_file(start / "adapter_model.safetensors")  # someone retrains SFT into the same folder
    name = next(k for k in weights if "lora_B" in k)
    weights[name] = weights[name] + 1e-3 * torch.ones_like(weights[name])
    save_file(weights, start / "adapter_model.safetensors")
    run = fit("grpo_labels.yaml", tmp_path, *grpo, "--trainer.max_steps=8", "--ckpt_path=last",
              f"--checkpoint.dirpath={tmp_path / 'grpo_labels' / 'checkpoints'}")
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert len(errors) == 1 and "is not the adapter this run started from" in errors[0], errors
    assert sorted(scalars(tmp_path / "grpo_labels")["train/lr"]) == list(range(6))  # nothing trained after it
