"""Training throughput: real (non-padding) tokens per second of nlicot vs TRL's SFTTrainer, same model, same data.

    python benchmarks/train_throughput.py [--config demo.yaml] [--steps 4] [--warmup 1] [--copies 8] [--rounds 2]
    python benchmarks/train_throughput.py --config smollm2.yaml     # a real pretrained base (the real extra)

Three runs, each in its own process (so peak RSS is its own), on the base model of ``configs/<--config>`` (tiny-nli
for the demo; SmolLM2-135M-Instruct from its GGUF for smollm2.yaml; bitsandbytes 4-bit NF4 + double quant, fp32
compute, CPU) with that config's LoRA (r, alpha, dropout, target modules) and row width, AdamW, gradient clipping
1.0, 2-step gradient accumulation, no gradient checkpointing, and the same token ids (prompt = ``encode_prompts``,
completion = ``encode_answers``, through the base's own template; loss on the answer only):

* ``trl-padded``  TRL 1.16 ``SFTTrainer``, packing off: padded batches (the seed's setup). Micro-batch =
                  nlicot's rows x examples per packed row, so both see about the same tokens per step.
* ``trl-packed``  TRL's best packing: ``packing=True, packing_strategy="bfd"`` (which forces ``padding_free``):
                  the micro-batch's packed rows are flattened into one sequence with restarting position_ids.
                  On sdpa, transformers turns those position_ids into a block-diagonal mask, so examples stay
                  isolated (checked in the run, printed as max |logit difference| vs the example alone).
* ``nlicot``      ``python -m nlicot fit --config configs/<--config>`` (in process, same CLI and overrides):
                  BFD packs, length-grouped batches, 4-D block-causal mask, LM head on answer tokens only.

Data: ``data/demo/train.jsonl`` replicated ``--copies`` times (ids made unique). Timing covers ``--steps``
optimizer steps after ``--warmup`` steps (one-off costs excluded), from the end of one optimizer step to the end of
another, so data loading, logging and the optimizer are inside; checkpoint writing is kept out of the window
(TRL saves nothing either). TRL casts a quantized model's LoRA weights to bf16 (QLoRA paper recipe); they are
cast back to fp32 before training so both sides compute in fp32. The CPU is shared with other work: the runs
go one after another, interleaved across ``--rounds``, and the fastest round of each counts.
Targets (issue 8): nlicot >= 1.5x trl-padded and >= 1.0x trl-packed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from _common import REPO, config_max_length, peak_rss_mib

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11, harmless

ENGINES = ("trl-padded", "trl-packed", "nlicot")
MICRO_BATCH, ACCUMULATE = 4, 2
LEARNING_RATE = 1e-3  # speed does not depend on it; both engines use it


@dataclass(frozen=True)
class Recipe:
    """What both engines take from the config: the base, the row width it packs to and its LoRA."""

    config: str
    model: str
    max_length: int
    lora: dict[str, Any]

    @classmethod
    def read(cls, config: str) -> Recipe:
        cfg = yaml.safe_load((REPO / "configs" / config).read_text())
        model = cfg["model"].get("init_args", cfg["model"])
        lora = model["lora"]
        return cls(config, model["model_name_or_path"], config_max_length(config),
                   dict(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.05),
                        target_modules=list(lora["target_modules"])))  # fmt: skip


# ----------------------------------------------------------------------------------------------- measurement
class _Meter:
    """Cumulative (time, real tokens, slots, supervised tokens) at the end of every optimizer step."""

    def __init__(self) -> None:
        self.real = self.slots = self.supervised = 0
        self.marks: list[tuple[float, int, int, int]] = []

    def count(self, real: int, slots: int, supervised: int) -> None:
        self.real, self.slots, self.supervised = self.real + real, self.slots + slots, self.supervised + supervised

    def step_done(self) -> None:
        self.marks.append((time.perf_counter(), self.real, self.slots, self.supervised))

    def result(self, warmup: int, steps: int) -> dict[str, float]:
        """Figures of optimizer steps ``warmup + 1 … warmup + steps`` (clock starts when step ``warmup`` ends)."""
        if len(self.marks) < warmup + steps:
            raise RuntimeError(f"only {len(self.marks)} optimizer steps ran; wanted {warmup} + {steps}")
        (t0, r0, s0, l0), (t1, r1, s1, l1) = self.marks[warmup - 1], self.marks[warmup + steps - 1]
        return {"seconds": t1 - t0, "steps": steps, "real_tokens": r1 - r0, "slots": s1 - s0,
                "supervised_tokens": l1 - l0, "peak_rss_mib": peak_rss_mib()}  # fmt: skip


class StepClock(L.Callback):
    """Lightning side of :class:`_Meter` (the nlicot worker names it on the CLI as ``trainer.callbacks``)."""

    def __init__(self, out: str, warmup: int, steps: int) -> None:
        self.out, self.warmup, self.steps, self.meter = out, warmup, steps, _Meter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from nlicot.packing import IGNORE_INDEX

        supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # what the loss counts (shifted targets)
        self.meter.count(int(batch["num_real_tokens"]), batch["input_ids"].numel(), supervised)
        if trainer.global_step > len(self.meter.marks):  # this micro-batch ended an optimizer step
            self.meter.step_done()

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps(self.meter.result(self.warmup, self.steps)))


# ----------------------------------------------------------------------------------------------- workers
def run_nlicot(recipe: Recipe, data: Path, out: Path, warmup: int, steps: int, tmp: Path) -> None:
    """The real CLI path, in this process, with the recipe's config and a step clock."""
    from nlicot.cli import main

    main([
        "fit", "--config", str(REPO / "configs" / recipe.config), f"--model.optim.learning_rate={LEARNING_RATE}",
        f"--data.train_path={data}", "--data.val_path=null", "--data.test_path=null",
        f"--data.micro_batch_size={MICRO_BATCH}", f"--trainer.accumulate_grad_batches={ACCUMULATE}",
        f"--trainer.max_steps={warmup + steps}", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--checkpoint.dirpath={tmp / 'ckpt'}", "--checkpoint.every_n_train_steps=100000",
        f"--trainer.logger.init_args.save_dir={tmp / 'tb'}",
        "--trainer.callbacks+=train_throughput.StepClock", f"--trainer.callbacks.out={out}",
        f"--trainer.callbacks.warmup={warmup}", f"--trainer.callbacks.steps={steps}",
    ])  # fmt: skip


def token_ids(recipe: Recipe, data: Path) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and answer ids of every row, through nlicot's template for this base (what TRL is given too)."""
    from nlicot.corpus import load_rows
    from nlicot.hub import load_tokenizer
    from nlicot.prompt import encode_answers, encode_prompts

    tokenizer = load_tokenizer(recipe.model)
    rows = load_rows(str(data))
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    return prompts, answers


def examples_per_pack(recipe: Recipe, data: Path) -> float:
    """How many examples nlicot packs into one ``max_length``-token row of this corpus (sets TRL's padded
    micro-batch)."""
    from nlicot.packing import pack_examples

    prompts, answers = token_ids(recipe, data)
    lengths = [len(p) + len(a) for p, a in zip(prompts, answers, strict=True)]
    return len(lengths) / len(pack_examples(lengths, recipe.max_length))


def isolation_gap(trainer) -> float:
    """Max |logit difference| between an example inside TRL's flattened packed batch and the same example alone.

    Grad mode stays on: a 4-bit layer run under no_grad in eval mode is repacked by bitsandbytes for another CPU
    kernel, which would change the speed of the training that follows.
    """
    import torch

    model = trainer.model
    row = next(r for r in trainer.train_dataset if len(r["seq_lengths"]) > 1)
    first, second = row["seq_lengths"][:2]
    batch = trainer.data_collator([row])
    model.eval()
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    packed = model(**inputs).logits[0, first : first + second]
    alone = model(input_ids=torch.tensor([row["input_ids"][first : first + second]])).logits[0]
    model.train()
    return float((packed - alone).abs().max())


def run_trl(recipe: Recipe, data: Path, out: Path, warmup: int, steps: int, tmp: Path, packed: bool,
            micro_batch: int) -> None:
    """TRL's SFTTrainer on the same ids, model, LoRA and optimizer settings."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from nlicot.hub import load_tokenizer, resolve_model_path
    from nlicot.packing import IGNORE_INDEX

    meter = _Meter()

    class CountingSFTTrainer(SFTTrainer):
        """Counts the tokens of every micro-batch it trains on (the collator runs a batch ahead)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else ids.numel()
            meter.count(real, ids.numel(), int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_done()

    prompts, answers = token_ids(recipe, data)
    keep = [i for i, (p, a) in enumerate(zip(prompts, answers, strict=True)) if len(p) + len(a) <= recipe.max_length]
    dataset = datasets.Dataset.from_dict({
        "input_ids": [prompts[i] + answers[i] for i in keep],
        "labels": [[IGNORE_INDEX] * len(prompts[i]) + answers[i] for i in keep],
    })  # fmt: skip
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(recipe.model), quantization_config=quant,
                                                 dtype=torch.float32, attn_implementation="sdpa",
                                                 device_map={"": "cpu"})  # fmt: skip
    config = SFTConfig(
        output_dir=str(tmp / "trl"), max_steps=warmup + steps, per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=ACCUMULATE, learning_rate=LEARNING_RATE, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", lr_scheduler_type="constant", gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, max_length=recipe.max_length, packing=packed, packing_strategy="bfd", report_to=[],
        save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=42,
    )  # fmt: skip
    trainer = CountingSFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=load_tokenizer(recipe.model),
        peft_config=LoraConfig(bias="none", task_type="CAUSAL_LM", **recipe.lora), callbacks=[StepEnd()],
    )  # fmt: skip
    for param in trainer.model.parameters():  # TRL made the LoRA weights bf16; compute in fp32 like nlicot
        if param.requires_grad:
            param.data = param.data.float()
    gap = isolation_gap(trainer) if packed else None
    trainer.train()
    Path(out).write_text(json.dumps(meter.result(warmup, steps) | {"isolation_gap": gap}))


# ----------------------------------------------------------------------------------------------- parent
def replicate_demo(dest: Path, copies: int) -> None:
    """``copies`` x the demo train split, ids made unique, so an epoch holds enough optimizer steps."""
    lines = (REPO / "data" / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = []
    for c in range(copies):
        for line in lines:
            row = json.loads(line)
            row["id"] = f"{row['id']}-copy{c}"
            rows.append(json.dumps(row))
    dest.write_text("\n".join(rows) + "\n", encoding="utf-8")


def run_worker(engine: str, args: argparse.Namespace, data: Path, tmp: Path, micro_batch: int) -> dict:
    out = tmp / f"{engine}.json"
    cmd = [sys.executable, __file__, "--worker", engine, "--config", args.config, "--data", str(data), "--out", str(out),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--trl-micro-batch", str(micro_batch)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"{engine} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result | {"wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo.yaml", help="recipe under configs/: its base, LoRA, row width")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (>= 1)")
    parser.add_argument("--copies", type=int, default=8, help="times the 120-row demo train split is repeated")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the fastest counts")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trl-micro-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    recipe = Recipe.read(args.config)

    if args.worker:
        with tempfile.TemporaryDirectory(prefix="nlicot-bench-") as tmp:
            if args.worker == "nlicot":
                run_nlicot(recipe, args.data, args.out, args.warmup, args.steps, Path(tmp))
            else:
                packed = args.worker == "trl-packed"
                run_trl(recipe, args.data, args.out, args.warmup, args.steps, Path(tmp), packed,
                        MICRO_BATCH if packed else args.trl_micro_batch)  # fmt: skip
        return

    with tempfile.TemporaryDirectory(prefix="nlicot-bench-") as tmp:
        data = Path(tmp) / "train.jsonl"
        replicate_demo(data, args.copies)
        per_pack = examples_per_pack(recipe, data)
        padded_batch = round(MICRO_BATCH * per_pack)
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for engine in ENGINES:
                r = run_worker(engine, args, data, Path(tmp), padded_batch)
                r["tokens_per_s"] = r["real_tokens"] / r["seconds"]
                if engine not in best or r["tokens_per_s"] > best[engine]["tokens_per_s"]:
                    best[engine] = r

    import torch

    lora = recipe.lora
    print(f"{recipe.model} (configs/{recipe.config}) in NF4 + LoRA r{lora['r']} ({'/'.join(lora['target_modules'])}, "
          f"dropout {lora['lora_dropout']}), fp32, CPU ({torch.get_num_threads()} threads), demo corpus x"
          f"{args.copies}; {args.steps} timed optimizer steps after {args.warmup} warm-up; accumulate {ACCUMULATE}; "
          f"fastest of {args.rounds} round(s)")  # fmt: skip
    print(f"micro-batch: nlicot and trl-packed {MICRO_BATCH} packed rows of <= {recipe.max_length} tokens; "
          f"trl-padded {padded_batch} examples (= {MICRO_BATCH} x {per_pack:.2f} examples per packed row)")
    print(f"{'run':<12} {'real tok/s':>10} {'supervised/s':>12} {'real share':>10} {'tok/step':>8} "
          f"{'peak RSS':>9} {'wall':>6}")  # fmt: skip
    for engine in ENGINES:
        r = best[engine]
        print(f"{engine:<12} {r['tokens_per_s']:10.0f} {r['supervised_tokens'] / r['seconds']:12.0f} "
              f"{100 * r['real_tokens'] / r['slots']:9.1f}% {r['real_tokens'] / r['steps']:8.0f} "
              f"{r['peak_rss_mib']:6.0f} MiB {r['wall_s']:5.0f}s")  # fmt: skip
    gap = best["trl-packed"]["isolation_gap"]
    print(f"trl-packed isolation check: max |logit difference| vs the example alone = {gap:.1e}")
    nlicot = best["nlicot"]["tokens_per_s"]
    for engine, target in (("trl-padded", 1.5), ("trl-packed", 1.0)):
        ratio = nlicot / best[engine]["tokens_per_s"]
        print(f"nlicot vs {engine}: {ratio:.2f}x (target >= {target:.1f}x: {'met' if ratio >= target else 'NOT met'})")


if __name__ == "__main__":
    main()
