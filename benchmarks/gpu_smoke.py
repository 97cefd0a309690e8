"""The first GPU check, in one short run (about a minute on an H200): does nlicot's CUDA path train, isolate,
resume and generate?

    python benchmarks/gpu_smoke.py [--out DIR]    # on a CUDA machine; elsewhere it says "skipped:" and exits 0
    python benchmarks/gpu_smoke.py --dry-run      # the same checks on the CPU (fp32, AdamW): the wiring only

Each check prints one ``ok`` / ``FAIL`` line with its figures; all of them land in ``DIR/gpu_smoke.json`` (written
atomically after each check, so a run cut short keeps what it measured). Exit status 1 if any check failed.

1. ``environment``: versions of torch / CUDA / transformers / peft / bitsandbytes / lightning, the GPU, which
   attention paths are installed.
2. ``isolation:<path>`` for every installed path (sdpa, eager, and flash_attention_2 / _3 where flash-attn is
   installed): the NF4 tiny model, two packed rows of three examples; the largest |packed − alone| per-token loss
   against the same figure without isolation (nlicot.attention.isolation_gap). sdpa and eager run in fp32 compute
   (pass: < 1e-4, as on the CPU), flash in bf16 (pass: the gap is under a tenth of the leak control's).
3. ``fit``: ``python -m nlicot fit`` (configs/demo_handwritten.yaml on the tiny model) with NF4 + bf16-mixed + paged
   8-bit AdamW + gradient checkpointing, 6 optimizer steps; then 3 steps, a checkpoint, and a resume to 6 from it.
   Reports the largest train/loss difference between the resumed and the unbroken run (GPU attention backward is
   not deterministic: docs/resume.md) and the peak memory. On a GPU again as ``fit:deterministic`` under
   ``--trainer.deterministic=true``: does that make it exact, and at what cost in seconds.
4. ``generation``: batched greedy generation (32 rows at once, 32 new tokens) under bf16: rows/s, finish reasons.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from _common import REPO  # offline environment defaults, as in the tests

from nlicot.atomic import atomic_write_text

GIB = 2**30
FIT_STEPS, RESUME_AT = 6, 3


class Report:
    """Checks in order, each one line on stdout and a key of the JSON file rewritten after every check."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.checks: dict[str, dict[str, Any]] = {}

    def add(self, name: str, ok: bool, **figures: Any) -> None:
        self.checks[name] = {"ok": ok, **figures}
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {shown}", flush=True)
        if self.out is not None:
            atomic_write_text(self.out / "gpu_smoke.json", json.dumps(self.checks, indent=1, default=str))


def installed_paths() -> list[str]:
    """Attention implementations this machine can run: sdpa and eager always, flash where its package imports."""
    paths = ["sdpa", "eager"]
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        paths.append("flash_attention_2")
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn_interface") is not None:
        paths.append("flash_attention_3")
    return paths


def environment(gpu: bool) -> dict[str, Any]:
    versions = {name: importlib.metadata.version(name) for name in
                ("torch", "transformers", "peft", "bitsandbytes", "lightning", "torchdata", "jsonargparse")}
    return versions | {"cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if gpu else "cpu",
                       "paths": installed_paths()}  # fmt: skip


def loaded_module(attn: str, dtype: str, device: str):
    """NLICoTModule on ``device`` outside a fit: a bare Trainer gives configure_model its device."""
    from nlicot.args import LoRAConfig
    from nlicot.sft import NLICoTModule

    torch.manual_seed(0)
    module = NLICoTModule("tiny", attn_implementation=attn, compute_dtype=dtype, gradient_checkpointing=False,
                          lora=LoRAConfig(r=8, alpha=16, dropout=0.0))  # fmt: skip
    module.trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False)
    module.configure_model()
    with torch.no_grad():  # a non-trivial adapter, so LoRA layers take part in the comparison
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module.eval()


def demo_examples(tokenizer, n: int):
    from nlicot.corpus import load_rows
    from nlicot.packing import Example
    from nlicot.prompt import encode_answers, encode_prompts

    rows = load_rows(str(REPO / "data/demo/val.jsonl"))[:n]
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    return rows, prompts, [Example(p, a) for p, a in zip(prompts, answers)]


def check_isolation(report: Report, attn: str, device: str) -> None:
    from nlicot.attention import isolation_gap, without_isolation
    from nlicot.packing import IGNORE_INDEX

    half = attn.startswith("flash")  # flash-attn runs in half precision only
    module = loaded_module(attn, "bfloat16" if half else "float32", device)
    base = module.model.get_base_model()
    _, _, examples = demo_examples(module.tokenizer, 6)

    def losses(batch: dict, isolate: bool) -> torch.Tensor:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        inputs = module.decoder_inputs(batch)
        with torch.enable_grad(), torch.autocast(device, torch.bfloat16, enabled=half):
            hidden = base.get_decoder()(input_ids=batch["input_ids"],
                                        **(inputs if isolate else without_isolation(inputs))).last_hidden_state
            logits = base.get_output_embeddings()(hidden[:, :-1]).float()
        return F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none",
                               ignore_index=IGNORE_INDEX).detach()  # fmt: skip

    worst, leak = isolation_gap(losses, [examples[:3], examples[3:]], module.tokenizer.pad_token_id)
    ok = worst < leak / 10 if half else worst < 1e-4 < leak
    report.add(f"isolation:{attn}", ok, gap=worst, leak_control=leak, compute="bf16" if half else "fp32")


class StopAfter(L.Callback):
    """Ends a fit after ``step`` optimizer steps, as a crash would (the periodic checkpoint at that step stays), so
    the resumed run keeps the unbroken run's horizon: a resume with a longer ``max_steps`` re-plans the LR."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def losses_of(root: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for version in sorted((root / "tb" / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        acc = EventAccumulator(str(version))
        acc.Reload()
        out |= {e.step: e.value for e in acc.Scalars("train/loss")}
    return out


def check_fit_and_resume(report: Report, gpu: bool, work: Path, deterministic: bool = False) -> None:
    """Unbroken vs crashed-and-resumed fit; with ``deterministic``, under ``--trainer.deterministic=true``
    (torch.use_deterministic_algorithms): whether that makes the GPU resume exact, and what it costs in time."""
    from nlicot.cli import main

    settings = (["--trainer.accelerator=gpu", "--trainer.precision=bf16-mixed", "--model.compute_dtype=bfloat16",
                 "--model.optim.name=paged_adamw_8bit"] if gpu else
                ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--model.compute_dtype=float32",
                 "--model.optim.name=adamw"])  # fmt: skip
    settings.append(f"--trainer.deterministic={str(deterministic).lower()}")
    name = "fit:deterministic" if deterministic else "fit"

    def fit(root: Path, *extra: str) -> float:
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        main(["fit", "--config", str(REPO / "configs/demo_handwritten.yaml"), *settings, "--model.quantization=nf4",
              "--model.gradient_checkpointing=true", "--model.attn_implementation=auto", "--model.schedule.warmup_steps=2",
              "--model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "--trainer.limit_val_batches=0",
              f"--checkpoint.every_n_train_steps={RESUME_AT}", "--trainer.enable_progress_bar=false",
              f"--checkpoint.dirpath={root / 'ckpt'}", f"--trainer.logger.init_args.save_dir={root / 'tb'}",
              "--trainer.logger.init_args.name=run", f"--predictions.output_dir={root / 'predictions'}", *extra])
        return torch.cuda.max_memory_allocated() / GIB if gpu else float("nan")

    started, work = time.perf_counter(), work / name.replace(":", "-")
    try:
        peak = fit(work / "unbroken", f"--trainer.max_steps={FIT_STEPS}")
        stop = json.dumps({"class_path": f"{__name__}.StopAfter", "init_args": {"step": RESUME_AT}})
        fit(work / "resumed", f"--trainer.max_steps={FIT_STEPS}", f"--trainer.callbacks+={stop}")
        fit(work / "resumed", f"--trainer.max_steps={FIT_STEPS}", "--ckpt_path=last")
    except (Exception, SystemExit) as e:  # e.g. an op without a deterministic kernel: that is the finding
        report.add(name, False, error=f"{type(e).__name__}: {e}"[:500])
        return
    unbroken, resumed = losses_of(work / "unbroken"), losses_of(work / "resumed")
    after = range(RESUME_AT, FIT_STEPS)
    complete = set(unbroken) == set(resumed) == set(range(FIT_STEPS))
    diff = max(abs(unbroken[s] - resumed[s]) for s in after) if complete else float("inf")
    finite = all(v == v and abs(v) != float("inf") for v in unbroken.values())
    exact = gpu or diff < 1e-6  # the CPU resumes exactly (README); on a GPU the figure is the measurement
    report.add(name, complete and finite and exact, steps=FIT_STEPS, first_loss=unbroken.get(0), last_loss=unbroken.get(FIT_STEPS - 1),
               resumed_minus_unbroken=diff, peak_gib=peak, seconds=time.perf_counter() - started)  # fmt: skip


def check_generation(report: Report, device: str, gpu: bool) -> None:
    from nlicot.generation import generate_batched

    module = loaded_module("sdpa", "bfloat16" if gpu else "float32", device)
    _, prompts, _ = demo_examples(module.tokenizer, 32 if gpu else 4)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    out = generate_batched(module.model, module.tokenizer, prompts, max_new_tokens=32 if gpu else 8, batch_size=32)
    seconds = time.perf_counter() - started
    reasons = {r: sum(g.finish_reason == r for g in out) for r in ("json", "eos", "length")}
    report.add("generation", len(out) == len(prompts) and all(g.num_tokens > 0 or g.finish_reason == "eos" for g in out),
               rows=len(out), rows_per_s=len(out) / seconds, peak_gib=torch.cuda.max_memory_allocated() / GIB if gpu
               else float("nan"), **reasons)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_smoke.json (default: print only)")
    parser.add_argument("--dry-run", action="store_true", help="run the checks on the CPU (no GPU needed)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        print("skipped: benchmarks/gpu_smoke.py needs a CUDA GPU (none found); use --dry-run to check the wiring")
        return
    device = "cuda" if gpu else "cpu"
    report = Report(args.out)
    report.add("environment", True, **environment(gpu))
    for attn in installed_paths():
        check_isolation(report, attn, device)
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as work:
        for deterministic in [False, True] if gpu else [False]:  # the CPU is deterministic anyway
            check_fit_and_resume(report, gpu, Path(work), deterministic)
    check_generation(report, device, gpu)
    failed = [name for name, c in report.checks.items() if not c["ok"]]
    print(f"{'dry run: ' if args.dry_run else ''}{len(report.checks) - len(failed)}/{len(report.checks)} checks ok"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
