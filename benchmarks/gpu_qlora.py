"""QLoRA training throughput and peak memory at real size: nlicot vs a TRL ``SFTTrainer`` + peft baseline, same run.

    python benchmarks/gpu_qlora.py [--steps 200] [--micro-batch-size 8] [--layers 32] [--model-dir DIR]
    python benchmarks/gpu_qlora.py --dry-run          # CPU: the whole wiring on a shrunk model, a few steps

Needs a CUDA GPU; elsewhere it says so and exits 0 (``--dry-run`` runs anywhere). What it does:

1. Writes a Mistral-7B-v0.3-*shaped* model with random bf16 weights (no download) to a folder, one decoder layer
   per safetensors shard, generated on the GPU: the host never holds more than one layer (~0.5 GB).
2. Both arms load that folder as an NF4 double-quant base (bitsandbytes) and attach the LoRA of configs/best.yaml
   (r, alpha, dropout, target modules), with gradient checkpointing, bf16 compute, paged 8-bit AdamW, gradient
   clipping 1.0, micro-batch 8, no accumulation, on the same corpus (the demo rows repeated, 512-token packing):
   * nlicot: ``NLICoTModule`` + ``NLICoTDataModule`` under a Lightning ``Trainer`` (the ``fit`` code path);
   * baseline: TRL ``SFTTrainer`` with a peft ``LoraConfig``, pre-tokenized prompt + completion ids (identical
     tokens), completion-only loss, TRL's own best-fit-decreasing packing.
3. Each arm runs in its own process so peak memory (``torch.cuda.max_memory_allocated``, model load included) and
   allocator state do not leak from one into the other. Throughput = real (non-pad) tokens per second over the
   steps after ``--warmup-steps`` (kernel autotuning, paged-optimizer first touch are not timed).

Targets (issue 7): nlicot peak <= 12 GiB at micro-batch 8; nlicot >= 1.3x the baseline's tokens/s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _common import REPO  # offline environment defaults, as in the tests

TARGET_PEAK_GIB = 12.0
TARGET_SPEEDUP = 1.3
GIB = 2**30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def mistral_config(shape: str, layers: int | None):
    """Mistral-7B-v0.3's architecture (``7b``), or the same shape shrunk to nlicot's tiny widths (``tiny``)."""
    from transformers import MistralConfig

    from nlicot.tiny import tiny_config_kwargs

    kwargs = tiny_config_kwargs()
    if shape == "7b":
        kwargs |= dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128)  # fmt: skip
    if layers is not None:
        kwargs["num_hidden_layers"] = layers
    return MistralConfig(**kwargs)


def best_settings() -> dict[str, Any]:
    """The LoRA, quantization and optimizer settings of configs/best.yaml (the one place they are decided)."""
    cfg = yaml.safe_load((REPO / "configs" / "best.yaml").read_text())
    m = cfg["model"]
    keys = ("quantization", "double_quant", "gradient_checkpointing")
    lora = m["lora"]
    return {k: m[k] for k in keys} | {
        "lora_r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
        "target_modules": lora["target_modules"], "learning_rate": m["optim"]["learning_rate"],
        "max_length": cfg["data"]["max_length"], "gradient_clip_val": cfg["trainer"]["gradient_clip_val"]}


def meta_summary(config, best: dict[str, Any]) -> dict[str, int]:
    """Parameter counts of the base and of best.yaml's adapter, on the meta device (no memory, no weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        model = get_peft_model(MistralForCausalLM(config), LoraConfig(
            r=best["lora_r"], lora_alpha=best["lora_alpha"], target_modules=list(best["target_modules"]),
            task_type="CAUSAL_LM"))  # fmt: skip
    return {"base": sum(p.numel() for p in model.parameters() if not p.requires_grad),
            "adapter": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def write_random_model(config, folder: Path, device: torch.device, seed: int = 0) -> None:
    """A loadable random-weight checkpoint: shapes from the meta device, weights made one layer at a time.

    Linear and embedding weights ~ N(0, 0.02) (the Mistral init), norms 1, bf16. Written as a sharded safetensors
    checkpoint + index, beside the real v3 tokenizer, so ``from_pretrained(folder, quantization_config=…)`` loads
    it exactly like a downloaded model, shard by shard.
    """
    from safetensors.torch import save_file
    from transformers import MistralForCausalLM

    from nlicot.hub import resolve_model_path

    with torch.device("meta"):
        shapes = {name: t.shape for name, t in MistralForCausalLM(config).state_dict().items()}
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for name in shapes:
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        groups[f"layer{int(layer.group(1)):04d}" if layer else "outer"].append(name)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map, total = {}, 0
    for i, group in enumerate(sorted(groups)):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in groups[group]:
            t = torch.empty(shapes[name], dtype=torch.bfloat16, device=device)
            t = t.fill_(1.0) if name.endswith("norm.weight") else t.normal_(0.0, 0.02, generator=generator)
            tensors[name] = t.cpu()
            weight_map[name] = file
            total += t.numel() * t.element_size()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(resolve_model_path("tiny")) / name, folder / name)


def model_matches(folder: Path, config) -> bool:
    """Whether ``folder`` already holds a random model of this shape (``--model-dir`` reuse across runs)."""
    saved = folder / "config.json"
    if not (saved.is_file() and (folder / "model.safetensors.index.json").is_file()):
        return False
    old = json.loads(saved.read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size")  # fmt: skip
    return all(old.get(k) == getattr(config, k) for k in keys)


def write_corpus(path: Path, examples: int) -> None:
    """``examples`` corpus rows: the demo rows cycled with fresh ids (real prompt/answer length distribution)."""
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "train.jsonl").read_text().splitlines() if line]
    with open(path, "w") as f:
        for i in range(examples):
            f.write(json.dumps(rows[i % len(rows)] | {"id": f"bench-{i}"}) + "\n")


class Meter:
    """Per-step token counts and wall times (GPU synchronised) → tokens/s after the untimed warmup steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = max(1, warmup)
        self.times: list[float] = []
        self.tokens: list[int] = []

    def step(self, tokens: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.tokens.append(tokens)

    def result(self) -> dict[str, Any]:
        if len(self.times) <= self.warmup:
            raise RuntimeError(f"only {len(self.times)} steps ran; need more than --warmup-steps={self.warmup}")
        seconds = self.times[-1] - self.times[self.warmup - 1]
        timed = sum(self.tokens[self.warmup :])
        return {"steps": len(self.times), "timed_steps": len(self.times) - self.warmup, "seconds": seconds,
                "tokens_per_s": timed / seconds, "tokens_per_step": timed / (len(self.times) - self.warmup)}


def memory() -> dict[str, float | None]:
    if not torch.cuda.is_available():
        return {"peak_gib": None, "reserved_gib": None}
    return {"peak_gib": torch.cuda.max_memory_allocated() / GIB, "reserved_gib": torch.cuda.max_memory_reserved() / GIB}


def run_nlicot(model_dir: str, corpus: str, args: argparse.Namespace, best: dict[str, Any], gpu: bool) -> dict:
    """nlicot's own fit path: NLICoTDataModule packing + NLICoTModule (token-weighted loss) under Lightning."""
    import lightning as L

    from nlicot.args import LoRAConfig, OptimConfig, ScheduleConfig
    from nlicot.data import NLICoTDataModule
    from nlicot.sft import NLICoTModule

    class Timing(L.Callback):
        def __init__(self) -> None:
            self.meter = Meter(args.warmup_steps)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.meter.step(int(batch["num_real_tokens"]))

    L.seed_everything(42, verbose=False)
    data = NLICoTDataModule(train_path=corpus, tokenizer=model_dir, max_length=best["max_length"], packing=True,
                            micro_batch_size=args.micro_batch_size, cache=False)  # fmt: skip
    model = NLICoTModule(
        model_name_or_path=model_dir, quantization=best["quantization"], double_quant=best["double_quant"],
        compute_dtype="bfloat16" if gpu else "float32", gradient_checkpointing=best["gradient_checkpointing"],
        lora=LoRAConfig(r=best["lora_r"], alpha=best["lora_alpha"], dropout=best["lora_dropout"],
                        target_modules=list(best["target_modules"])),
        optim=OptimConfig(name="paged_adamw_8bit" if gpu else "adamw", learning_rate=best["learning_rate"]),
        schedule=ScheduleConfig(warmup_steps=args.steps // 10), attn_implementation=args.attention, packing=True,
    )  # fmt: skip
    timing = Timing()
    trainer = L.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else "32-true",
        max_steps=args.steps, accumulate_grad_batches=1, gradient_clip_val=best["gradient_clip_val"], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=[timing],
    )  # fmt: skip
    trainer.fit(model, data)
    loss = trainer.callback_metrics.get("train/loss")
    attn = model.model.get_base_model().config._attn_implementation
    return timing.meter.result() | {"loss": None if loss is None else float(loss), "attention": attn}


def run_trl(model_dir: str, corpus: str, args: argparse.Namespace, best: dict[str, Any], gpu: bool) -> dict:
    """The baseline as its documentation shows it: SFTTrainer + peft LoraConfig on an NF4 model, packing on."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from nlicot import prompt
    from nlicot.corpus import load_rows
    from nlicot.hub import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = load_rows(corpus)
    prompts = prompt.encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = prompt.encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    pairs = [(p, a) for p, a in zip(prompts, answers, strict=True) if len(p) + len(a) <= best["max_length"]]
    dataset = datasets.Dataset.from_dict({"input_ids": [p + a for p, a in pairs],
                                          "completion_mask": [[0] * len(p) + [1] * len(a) for p, a in pairs]})
    dtype = torch.bfloat16 if gpu else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                               bnb_4bit_use_double_quant=best["double_quant"])  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype,
                                                 attn_implementation=args.attention,
                                                 device_map={"": 0 if gpu else "cpu"})  # fmt: skip
    meter, counts = Meter(args.warmup_steps), collections.deque()

    class Timing(TrainerCallback):
        def on_step_end(self, train_args, state, control, **kwargs) -> None:
            meter.step(counts.popleft())

    out = tempfile.mkdtemp(prefix="trl-bench-")
    config = SFTConfig(
        output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=1, gradient_checkpointing=best["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=gpu, use_cpu=not gpu,
        optim="paged_adamw_8bit" if gpu else "adamw_torch", learning_rate=best["learning_rate"],
        lr_scheduler_type="cosine", warmup_steps=args.steps // 10, max_grad_norm=best["gradient_clip_val"],
        max_length=best["max_length"], packing=True, completion_only_loss=True, logging_steps=min(10, args.steps),
        report_to="none", save_strategy="no", seed=42, dataloader_num_workers=0,
    )  # fmt: skip
    peft = LoraConfig(r=best["lora_r"], lora_alpha=best["lora_alpha"], lora_dropout=best["lora_dropout"],
                      target_modules=list(best["target_modules"]), bias="none", task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft, callbacks=[Timing()])  # fmt: skip
    collate = trainer.data_collator

    def counting_collate(examples):  # batches are made in order, one per step: a FIFO pairs them with steps
        batch = collate(examples)
        mask = batch.get("attention_mask")
        counts.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting_collate
    try:
        trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return meter.result() | {"loss": losses[-1] if losses else None,
                             "attention": trainer.model.get_base_model().config._attn_implementation}


ARMS = {"nlicot": run_nlicot, "trl": run_trl}


def run_arm(args: argparse.Namespace) -> None:
    """Child process: one arm, result as JSON (written atomically) for the parent to compare."""
    gpu = torch.cuda.is_available() and not args.dry_run
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    result = ARMS[args.arm](args.model_dir, args.corpus, args, best_settings(), gpu) | memory()
    tmp = Path(args.result).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, args.result)


def spawn_arm(arm: str, args: argparse.Namespace, model_dir: Path, corpus: Path, work: Path, attention: str) -> dict:
    result = work / f"{arm}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--model-dir", str(model_dir),
           "--corpus", str(corpus), "--result", str(result), "--steps", str(args.steps),
           "--warmup-steps", str(args.warmup_steps), "--micro-batch-size", str(args.micro_batch_size),
           "--attention", attention, *(["--dry-run"] if args.dry_run else [])]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"error: the {arm} arm failed (exit {proc.returncode}); its output is above")
    return json.loads(result.read_text())


def report(config, summary: dict[str, int], args: argparse.Namespace, results: dict[str, dict]) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    print(f"\nMistral-7B-v0.3 shape (counted on the meta device): {summary['base'] / 1e9:.2f} B base parameters, "
          f"{summary['adapter']:,} LoRA parameters (configs/best.yaml)")  # fmt: skip
    print(f"trained: {config.num_hidden_layers} layers, hidden {config.hidden_size}, random weights, NF4 base; "
          f"device {device}; micro-batch {args.micro_batch_size} x {best_settings()['max_length']} tokens (packed); "
          f"{args.steps} steps, first {args.warmup_steps} untimed; attention {results['nlicot']['attention']}")
    print(f"{'arm':<8} {'tokens/s':>10} {'tokens/step':>12} {'peak GiB':>9} {'reserved GiB':>13} {'last loss':>10}")
    for arm, r in results.items():
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        reserved = "n/a" if r["reserved_gib"] is None else f"{r['reserved_gib']:.2f}"
        loss = "n/a" if r["loss"] is None else f"{r['loss']:.3f}"
        print(f"{arm:<8} {r['tokens_per_s']:>10.0f} {r['tokens_per_step']:>12.0f} {peak:>9} {reserved:>13} {loss:>10}")
    speedup = results["nlicot"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    if args.dry_run:
        print(f"speed-up nlicot / TRL: {speedup:.2f}x")
        print("dry run: wiring checked on a shrunk model on the CPU; these figures are not the benchmark")
        return
    print(f"speed-up nlicot / TRL: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")  # fmt: skip
    peak = results["nlicot"]["peak_gib"]
    print(f"nlicot peak memory: {peak:.2f} GiB (target <= {TARGET_PEAK_GIB:.0f} GiB: "
          f"{'met' if peak <= TARGET_PEAK_GIB else 'NOT met'})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per arm")
    parser.add_argument("--warmup-steps", type=int, default=10, help="first steps left out of the timing")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32, or 2 for --dry-run)")
    parser.add_argument("--examples", type=int, default=5000, help="corpus rows (the demo rows, repeated)")
    parser.add_argument("--model-dir", help="where the random model is written; reused when its shape matches")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU wiring check: tiny widths, --layers 2, 3 steps, AdamW, fp32 (no GPU needed)")
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--attention", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return run_arm(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("skipped: benchmarks/gpu_qlora.py needs a CUDA GPU (none found); use --dry-run to check the wiring "
              "on the CPU")  # fmt: skip
        return
    if args.dry_run:
        args.steps, args.warmup_steps, args.examples = min(args.steps, 3), 1, min(args.examples, 120)
        args.micro_batch_size = min(args.micro_batch_size, 2)
    config = mistral_config("tiny", args.layers or 2) if args.dry_run else mistral_config("7b", args.layers)
    summary = meta_summary(mistral_config("7b", None), best_settings())

    work = Path(tempfile.mkdtemp(prefix="gpu-qlora-"))
    try:
        model_dir = Path(args.model_dir) if args.model_dir else work / "model"
        if not model_matches(model_dir, config):
            device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
            started = time.perf_counter()
            write_random_model(config, model_dir, device)
            torch.cuda.empty_cache()  # the arms run in their own processes; give them the whole card
            print(f"wrote a random {config.num_hidden_layers}-layer model to {model_dir} "
                  f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        corpus = work / "train.jsonl"
        write_corpus(corpus, args.examples)
        # auto = flash-attention where installed and on a GPU; a dry run stays on the CPU even on a GPU machine
        results = {"nlicot": spawn_arm("nlicot", args, model_dir, corpus, work, "sdpa" if args.dry_run else "auto")}
        # the baseline gets the attention implementation nlicot chose (flash-attention where installed, else sdpa)
        results["trl"] = spawn_arm("trl", args, model_dir, corpus, work, results["nlicot"]["attention"])
        report(config, summary, args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
