"""QLoRA training throughput and peak memory at real size: nlicot vs a TRL ``SFTTrainer`` + peft baseline, same run.

    python benchmarks/gpu_qlora.py [--out DIR] [--steps 40] [--micro-batch-size 8] [--layers 32] [--model-dir DIR]
    python benchmarks/gpu_qlora.py --dry-run          # CPU: the whole wiring on a shrunk model, a few steps

Needs a CUDA GPU; elsewhere it says so and exits 0 (``--dry-run`` runs anywhere). The default (40 steps an arm) is
sized for 6 minutes on an H200, by estimate, not yet by a run: ~1 min to write the 14.5 GB random model, and per arm
~1 min to load and quantise it plus 40 steps of 8 x 512 tokens at >= 3,000 tokens/s (~1 min). What it does:

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
   steps after ``--warmup-steps`` (kernel autotuning, paged-optimizer first touch are not timed). Load (model +
   data + adapter), warm-up and timed steps are timed apart. Each arm's figures are written to ``DIR/<arm>.json``
   (atomically) as soon as it ends, so a run cut short keeps the arms that finished.
4. MFU and HFU by the formulas of benchmarks/_qlora_cost.py (frozen base: 4·N_lin per token, not 6N; LoRA 6·N_lora;
   causal attention within segments; the LM head on supervised tokens; HFU adds the gradient-checkpointing
   recompute and counts what the kernels compute, padding and masked pairs included), against the GPU's datasheet
   dense bf16 peak (``--peak-tflops`` for a GPU not in the table). And the peak memory the formula predicts beside
   the measured one.

Targets (issue 7): nlicot peak <= 12 GiB at micro-batch 8; nlicot >= 1.3x the baseline's tokens/s.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _qlora_cost as cost
import torch
import yaml
from _common import REPO  # offline environment defaults, as in the tests

from nlicot.atomic import atomic_write_text

TARGET_PEAK_GIB = 12.0
TARGET_SPEEDUP = 1.3
GIB = 2**30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def mistral_config(shape: str, layers: int | None):
    """Mistral-7B-v0.3's architecture (``7b``), or the same shape shrunk to nlicot's tiny widths (``tiny``)."""
    from transformers import MistralConfig

    from nlicot.offline.random_tiny import tiny_config_kwargs

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


def step_counts(batch: dict[str, torch.Tensor], flash: bool, head_on_all: bool) -> dict[str, int]:
    """What a micro-batch asks of the GPU, for the FLOP formulas: segments are runs of restarting position_ids;
    a segment is real if it holds a supervised label (an example), else padding.

    ``pairs`` = real causal query-key pairs; ``hw_pairs`` = what the kernel computes: every segment's causal pairs on
    flash varlen, all rows × width² on a masked sdpa/eager kernel. ``head_tokens``: positions that get logits.
    """
    labels = batch["labels"].cpu()
    rows, width = labels.shape
    positions = batch.get("position_ids")
    positions = torch.arange(width).expand(rows, width) if positions is None else positions.cpu()
    real, every = [], []
    for r in range(rows):
        starts = [*(positions[r] == 0).nonzero().flatten().tolist(), width]
        for s, e in zip(starts[:-1], starts[1:]):
            every.append(e - s)
            if bool((labels[r, s:e] != -100).any()):
                real.append(e - s)
    supervised = int((labels[:, 1:] != -100).sum())
    return {"tokens": sum(real), "slots": rows * width, "supervised": supervised,
            "head_tokens": rows * width if head_on_all else supervised, "pairs": cost.causal_pairs(real),
            "hw_pairs": cost.causal_pairs(every) if flash else rows * width * width}  # fmt: skip


class Meter:
    """Per-step counts and wall times (GPU synchronised): load, warm-up and timed phases, tokens/s after warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = max(1, warmup)
        self.created = time.perf_counter()
        self.started: float | None = None
        self.times: list[float] = []
        self.counts: list[dict[str, int]] = []

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """Training begins: everything before it (model load, quantisation, data, adapter) is load time."""
        self.started = self._now()

    def step(self, counts: dict[str, int]) -> None:
        self.times.append(self._now())
        self.counts.append(counts)

    def result(self) -> dict[str, Any]:
        if len(self.times) <= self.warmup:
            raise RuntimeError(f"only {len(self.times)} steps ran; need more than --warmup-steps={self.warmup}")
        seconds = self.times[-1] - self.times[self.warmup - 1]
        timed = {k: sum(c[k] for c in self.counts[self.warmup :]) for k in self.counts[0]}
        n = len(self.times) - self.warmup
        return {"steps": len(self.times), "timed_steps": n, "seconds": seconds, "load_s": self.started - self.created,
                "warmup_s": self.times[self.warmup - 1] - self.started, "tokens_per_s": timed["tokens"] / seconds,
                "tokens_per_step": timed["tokens"] / n, "timed": timed}  # fmt: skip


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

    flash = args.attention.startswith("flash")

    class Timing(L.Callback):
        def __init__(self) -> None:
            self.meter = Meter(args.warmup_steps)

        def on_train_start(self, trainer, pl_module) -> None:
            self.meter.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.meter.step(step_counts(batch, flash, head_on_all=False))  # the head runs on supervised tokens

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

    meter, counts = Meter(args.warmup_steps), collections.deque()  # load time starts here, as in the nlicot arm
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
    flash = args.attention.startswith("flash")

    class Timing(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs) -> None:
            meter.start()

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
        counts.append(step_counts(batch, flash, head_on_all=True))  # transformers' loss: logits at every position
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
    atomic_write_text(args.result, json.dumps(result, indent=1))


def spawn_arm(arm: str, args: argparse.Namespace, model_dir: Path, corpus: Path, out: Path, attention: str) -> dict:
    result = out / f"{arm}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--model-dir", str(model_dir),
           "--corpus", str(corpus), "--result", str(result), "--steps", str(args.steps),
           "--warmup-steps", str(args.warmup_steps), "--micro-batch-size", str(args.micro_batch_size),
           "--attention", attention, *(["--dry-run"] if args.dry_run else [])]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"error: the {arm} arm failed (exit {proc.returncode}); its output is above")
    return json.loads(result.read_text())


def utilisation(result: dict[str, Any], shape: cost.Shape, peak_tflops: float | None) -> dict[str, float | None]:
    """Model and hardware FLOP/s of an arm's timed steps (benchmarks/_qlora_cost.py) and their share of the peak."""
    t = result["timed"]
    model = cost.model_flops(shape, t["tokens"], t["supervised"], t["pairs"]) / result["seconds"]
    hardware = cost.hardware_flops(shape, t["slots"], t["head_tokens"], t["hw_pairs"]) / result["seconds"]
    peak = None if peak_tflops is None else peak_tflops * 1e12
    return {"model_tflops": model / 1e12, "hardware_tflops": hardware / 1e12,
            "mfu": None if peak is None else model / peak, "hfu": None if peak is None else hardware / peak}


def flops_summary(shape: cost.Shape, length: int) -> str:
    """The per-token FLOP counts of the formulas on ``shape`` for full ``length``-token segments, against 6N."""
    pairs, tokens = cost.causal_pairs([length]), length
    model = cost.model_flops(shape, tokens, tokens, pairs) / tokens
    hardware = cost.hardware_flops(shape, tokens, tokens, pairs) / tokens
    six_n = 6 * (shape.linear + shape.lora + shape.hidden * shape.vocab)
    return (f"FLOPs per token ({length}-token segments, head on every token): model {model / 1e9:.2f} G, hardware "
            f"(+ checkpoint recompute) {hardware / 1e9:.2f} G; 6N would say {six_n / 1e9:.2f} G")


def report(config, args: argparse.Namespace, results: dict[str, dict], peak_tflops: float | None) -> dict:
    best = best_settings()
    shape_7b = cost.shape_of(mistral_config("7b", None), best["lora_r"], best["target_modules"])
    trained = cost.shape_of(config, best["lora_r"], best["target_modules"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    print(f"\nMistral-7B-v0.3 shape (counted on the meta device): {shape_7b.linear / 1e9:.2f} B decoder linear weights, "
          f"{shape_7b.lora:,} LoRA parameters (configs/best.yaml)")  # fmt: skip
    print(flops_summary(shape_7b, best["max_length"]))
    print(f"trained: {config.num_hidden_layers} layers, hidden {config.hidden_size}, random weights, NF4 base; "
          f"device {device} (peak {peak_tflops or 'unknown'} TFLOP/s bf16 dense); micro-batch "
          f"{args.micro_batch_size} x {best['max_length']} tokens (packed); {args.steps} steps, first "
          f"{args.warmup_steps} untimed; attention {results['nlicot']['attention']}")  # fmt: skip
    print(f"{'arm':<7} {'load s':>7} {'warm-up s':>9} {'steps s':>8} {'tokens/s':>9} {'MFU':>6} {'HFU':>6} "
          f"{'peak GiB':>9} {'reserved':>9} {'loss':>7}")
    summary = {}
    for arm, r in results.items():
        u = utilisation(r, trained, peak_tflops)
        summary[arm] = r | u
        pct = {k: "n/a" if u[k] is None else f"{100 * u[k]:.1f}%" for k in ("mfu", "hfu")}
        gib = {k: "n/a" if r[k] is None else f"{r[k]:.2f}" for k in ("peak_gib", "reserved_gib")}
        loss = "n/a" if r["loss"] is None else f"{r['loss']:.3f}"
        print(f"{arm:<7} {r['load_s']:>7.1f} {r['warmup_s']:>9.1f} {r['seconds']:>8.1f} {r['tokens_per_s']:>9.0f} "
              f"{pct['mfu']:>6} {pct['hfu']:>6} {gib['peak_gib']:>9} {gib['reserved_gib']:>9} {loss:>7}")
    t = results["nlicot"]["timed"]
    estimate = cost.memory_estimate(trained, args.micro_batch_size, best["max_length"], t["supervised"] / t["slots"])
    print(f"nlicot peak memory by formula (benchmarks/_qlora_cost.py): {estimate['peak'] / cost.GIB:.2f} GiB")
    speedup = results["nlicot"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    summary["speedup"], summary["memory_estimate_gib"] = speedup, estimate["peak"] / cost.GIB
    if args.dry_run:
        print(f"speed-up nlicot / TRL: {speedup:.2f}x")
        print("dry run: wiring checked on a shrunk model on the CPU; these figures are not the benchmark")
        return summary
    print(f"speed-up nlicot / TRL: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")  # fmt: skip
    peak = results["nlicot"]["peak_gib"]
    print(f"nlicot peak memory: {peak:.2f} GiB (target <= {TARGET_PEAK_GIB:.0f} GiB: "
          f"{'met' if peak <= TARGET_PEAK_GIB else 'NOT met'})")  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per arm")
    parser.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32, or 2 for --dry-run)")
    parser.add_argument("--examples", type=int, default=2000, help="corpus rows (the demo rows, repeated)")
    parser.add_argument("--model-dir", help="where the random model is written; reused when its shape matches")
    parser.add_argument("--out", type=Path, help="folder for <arm>.json (each written when its arm ends) and "
                        "gpu_qlora.json (the summary); default: a temporary folder")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the built-in table")
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
    gpu = torch.cuda.is_available() and not args.dry_run
    peak_tflops = args.peak_tflops or (cost.peak_tflops(torch.cuda.get_device_name()) if gpu else None)

    work = Path(tempfile.mkdtemp(prefix="gpu-qlora-"))
    out = args.out or work
    try:
        model_dir = Path(args.model_dir) if args.model_dir else work / "model"
        if not model_matches(model_dir, config):
            started = time.perf_counter()
            write_random_model(config, model_dir, torch.device("cuda" if gpu else "cpu"))
            torch.cuda.empty_cache()  # the arms run in their own processes; give them the whole card
            print(f"wrote a random {config.num_hidden_layers}-layer model to {model_dir} "
                  f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        corpus = work / "train.jsonl"
        write_corpus(corpus, args.examples)
        # auto = sdpa (nlicot/attention.py); a dry run stays on the CPU even on a GPU machine
        results = {"nlicot": spawn_arm("nlicot", args, model_dir, corpus, out, "sdpa" if args.dry_run else "auto")}
        # the baseline gets the attention implementation nlicot chose, so both isolate the same way
        results["trl"] = spawn_arm("trl", args, model_dir, corpus, out, results["nlicot"]["attention"])
        summary = report(config, args, results, peak_tflops)
        atomic_write_text(out / "gpu_qlora.json", json.dumps(summary, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
