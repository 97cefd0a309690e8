"""Training that survives interruption, on the tiny NF4 model: real `python -m nlicot fit` processes, a real
SIGKILL, exact resume, smooth extension, adapter-only checkpoints that load in plain peft, token-weighted
accumulation, and a clean stop on a non-finite loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from nlicot.args import LoRAConfig, OptimConfig, ScheduleConfig
from nlicot.checkpointing import AtomicCheckpointIO
from nlicot.data import NLICoTDataModule
from nlicot.lora import NonFiniteLossError
from nlicot.sft import NLICoTModule

REPO = Path(__file__).resolve().parents[1]
# Small, quick and still mid-epoch: 42 packed rows / micro-batch 2 = 21 micro-batches, 11 optimizer steps an epoch.
FAST = ["--data.micro_batch_size=2", "--trainer.accumulate_grad_batches=2", "--trainer.limit_val_batches=0",
        "--checkpoint.every_n_train_steps=2", "--model.schedule.warmup_steps=3", "--trainer.enable_progress_bar=false"]


def fit_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nlicot", "fit", "--config", str(REPO / "configs/demo_handwritten.yaml"), *FAST,
            f"--checkpoint.dirpath={root / 'ckpt'}", f"--trainer.logger.init_args.save_dir={root / 'tb'}",
            "--trainer.logger.init_args.name=run", *extra]


def run_fit(root: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(fit_cmd(root, *extra), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def scalars(root: Path, version: int = -1) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted((root / "tb" / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    acc = EventAccumulator(str(versions[version]))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_fit_logs_every_step_saves_adapter_that_plain_peft_loads(tmp_path, tiny_path):
    run_fit(tmp_path, "--trainer.max_steps=12")
    logged = scalars(tmp_path)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/packing_efficiency"):
        assert sorted(logged[tag]) == list(range(12)), tag
    loss = [logged["train/loss"][s] for s in range(12)]
    assert sum(loss[-3:]) < sum(loss[:3])  # it learns
    assert min(logged["train/packing_efficiency"].values()) > 0.8
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "tb" / "run").glob("version_*"))))
    acc.Reload()
    assert "data/train/text_summary" in acc.Tags()["tensors"]  # the data report sits beside the curves
    assert "data/train/thought_tokens" in acc.Tags()["histograms"]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 12
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # adapter only, no frozen base
    # the adapter folder loads without nlicot
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    model = PeftModel.from_pretrained(base, str(tmp_path / "ckpt" / "adapter"))
    loaded = {k.split("lora_", 1)[1]: v for k, v in model.state_dict().items() if "lora_" in k}
    saved = {k.split("lora_", 1)[1]: v for k, v in ckpt["state_dict"].items()}
    assert len(loaded) == len(saved)
    assert (tmp_path / "ckpt" / "adapter" / "nlicot.json").is_file()


def wait_for_checkpoint(ckpt_dir: Path, min_step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(int(p.stem[4:]) >= min_step for p in ckpt_dir.glob("step*.ckpt")):
            return
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    raise TimeoutError


@pytest.mark.slow
def test_sigkill_resume_is_exact_and_extension_is_smooth(tmp_path):
    steps = 16
    run_fit(tmp_path / "unbroken", f"--trainer.max_steps={steps}")
    ref = scalars(tmp_path / "unbroken")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(fit_cmd(killed, f"--trainer.max_steps={steps}"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_checkpoint(killed / "ckpt", 6, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed_from = torch.load(killed / "ckpt" / "last.ckpt", weights_only=False)["global_step"]
    assert 4 <= resumed_from < steps and resumed_from % 11 != 0  # mid-epoch (last.ckpt may lag the newest file)
    extension = tmp_path / "extended"
    extension.mkdir()
    (extension / "ckpt").mkdir()
    (extension / "ckpt" / "last.ckpt").write_bytes((killed / "ckpt" / "last.ckpt").read_bytes())

    run_fit(killed, f"--trainer.max_steps={steps}", "--ckpt_path=last")
    again = scalars(killed)
    resumed_steps = sorted(again["train/lr"])
    assert resumed_steps == list(range(resumed_from, steps))
    d_lr = max(abs(again["train/lr"][s] - ref["train/lr"][s]) for s in resumed_steps)
    d_loss = max(abs(again["train/loss"][s] - ref["train/loss"][s]) for s in resumed_steps)
    print(f"\nresume after SIGKILL at step {resumed_from}: max |dLR| = {d_lr:.3g}, max |dloss| = {d_loss:.3g}")
    assert d_lr == 0.0
    assert d_loss <= 1e-6

    run_fit(extension, f"--trainer.max_steps={2 * steps}", "--ckpt_path=last")
    ext = scalars(extension)["train/lr"]
    before = [ref["train/lr"][s] for s in range(3, steps)]  # the cosine the stopped run was on
    ordinary = max(abs(a - b) for a, b in zip(before, before[1:]))
    jump = abs(ext[resumed_from] - ref["train/lr"][resumed_from - 1])
    print(f"extension {steps} -> {2 * steps} steps at step {resumed_from}: LR jump {jump:.3g} "
          f"(ordinary step change up to {ordinary:.3g})")
    assert jump <= ordinary
    assert max(ext.values()) <= ref["train/lr"][resumed_from - 1]  # no second warmup
    assert ext[2 * steps - 1] < ext[resumed_from]  # it decays over the new horizon


@pytest.mark.slow
def test_resume_from_checkpoint_taken_just_before_validation_is_exact(tmp_path):
    """The step checkpoint at an epoch end is written before that epoch's validation and the next epoch's loader:
    whatever those draw from the random generators must not shift the resumed run's dropout masks."""
    steps, per_epoch = 16, 11
    val = ["--trainer.limit_val_batches=1.0", "--trainer.check_val_every_n_epoch=1",
           f"--checkpoint.every_n_train_steps={per_epoch}", f"--trainer.max_steps={steps}"]
    run_fit(tmp_path / "unbroken", *val)
    ref = scalars(tmp_path / "unbroken")
    assert sorted(ref["val/loss"]) == [per_epoch - 1]  # validation ran once, right after the checkpoint
    ckpt = tmp_path / "unbroken" / "ckpt" / f"step{per_epoch:06d}.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == per_epoch

    # the same resume, and once more without any validation: training does not depend on when validation runs
    for name, extra in (("resumed", []), ("resumed_no_val", ["--trainer.limit_val_batches=0"])):
        run_fit(tmp_path / name, *val, *extra, f"--ckpt_path={ckpt}")
        again = scalars(tmp_path / name)
        assert sorted(again["train/loss"]) == list(range(per_epoch, steps))
        d_loss = max(abs(again["train/loss"][s] - ref["train/loss"][s]) for s in range(per_epoch, steps))
        print(f"\n{name} from the epoch-end checkpoint at step {per_epoch}: max |dloss| = {d_loss:.3g}")
        assert d_loss <= 1e-6, name


@pytest.mark.slow
def test_fresh_fit_refuses_to_overwrite_and_last_must_exist(tmp_path):
    (tmp_path / "ckpt").mkdir()
    cmd = fit_cmd(tmp_path, "--trainer.max_steps=1", "--ckpt_path=last")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "no " in proc.stderr and "last.ckpt to resume from" in proc.stderr
    (tmp_path / "ckpt" / "step000002.ckpt").write_bytes(b"x")
    proc = subprocess.run(fit_cmd(tmp_path, "--trainer.max_steps=1"), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "ckpt" / "step000002.ckpt").read_bytes() == b"x"


# ---------------------------------------------------------------- in-process


def trainer(tmp_path: Path, accumulate: int, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, accumulate_grad_batches=accumulate,
                     default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()], **kw)


class GradCapture(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def step_gradients(tmp_path: Path, micro: int, accumulate: int) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    capture = GradCapture()
    dm = NLICoTDataModule(train_path=str(REPO / "data/demo/train.jsonl"), micro_batch_size=micro,
                          group_by_length=False)
    model = NLICoTModule("tiny", compute_dtype="float32", gradient_checkpointing=False,
                         lora=LoRAConfig(r=4, alpha=8, dropout=0.0), schedule=ScheduleConfig(warmup_steps=0),
                         optim=OptimConfig(name="adamw"))
    t = trainer(tmp_path, accumulate, max_steps=1, callbacks=[capture], enable_checkpointing=False)
    t.fit(model, dm)
    return capture.grads


def test_accumulation_equals_one_big_batch_token_weighted(tmp_path):
    small = step_gradients(tmp_path / "a", micro=2, accumulate=4)
    big = step_gradients(tmp_path / "b", micro=8, accumulate=1)
    assert small.keys() == big.keys() and small
    worst = max(((small[k] - big[k]).abs().max() / big[k].abs().max().clamp(min=1e-12)).item() for k in big)
    assert worst < 1e-4
    assert any(g.abs().max() > 0 for g in big.values())


class PoisonAfter(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))


def test_nan_loss_stops_with_usable_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = NLICoTDataModule(train_path=str(REPO / "data/demo/train.jsonl"), micro_batch_size=4)
    model = NLICoTModule("tiny", compute_dtype="float32", gradient_checkpointing=False, lora=LoRAConfig(r=4, alpha=8),
                         schedule=ScheduleConfig(warmup_steps=0), optim=OptimConfig(name="adamw"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_last=True)
    t = trainer(tmp_path, 1, max_steps=10, callbacks=[ckpt, PoisonAfter(3)])
    with pytest.raises(NonFiniteLossError, match="loss is nan at optimizer step 3"):
        t.fit(model, dm)
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"step": 2, "bad": Boom()}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_checkpoint_of_mistral_7b_adapter_is_about_100_mb():
    """Adapter of configs/best.yaml on a Mistral-7B-v0.3-shaped model, counted on the meta device (no weights).

    A checkpoint holds these trainable tensors (fp32, as QLoRA trains them) plus optimizer state, never the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    with torch.device("meta"):
        model = get_peft_model(MistralForCausalLM(cfg), LoraConfig(r=32, lora_alpha=64, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert adapter == 32 * (2 * 32 * (4096 + 4096) + 2 * 32 * (4096 + 1024))  # q, o: 4096->4096; k, v: 4096->1024
    assert adapter == 27_262_976
    assert adapter * 4 < 110e6 < base * 2 / 100  # fp32 adapter 109 MB: under 1 % of the 14.5 GB bf16 base


def test_model_does_not_import_the_data_module():
    """The module is model, loss, optimizer and checkpoint slimming: data reports and evaluation rows come
    through callbacks (nlicot/callbacks.py), so importing the model never pulls in the data pipeline."""
    code = "import sys, nlicot.sft; assert 'nlicot.data' not in sys.modules, sorted(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
