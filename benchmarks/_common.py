"""What several benchmark scripts share: the offline environment, the machine description and peak memory.

Imported as ``_common`` by scripts run as ``python benchmarks/<name>.py`` (their folder is then on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Same defaults as the tests: one tiny-model cache per checkout, never the network.
os.environ.setdefault("NLICOT_CACHE", str(REPO / ".cache" / "nlicot"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def config_max_length(config: str) -> int:
    """``data.max_length`` of ``configs/<config>``: the row width a benchmark packs to is the one that recipe trains
    with, not a second knob that could drift from it."""
    import yaml

    return int(yaml.safe_load((REPO / "configs" / config).read_text())["data"]["max_length"])


def nlicot_cli(*args: str) -> float:
    """Run ``python -m nlicot …`` in the repo; return its wall seconds (exits with its stderr on failure)."""
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nlicot", *args, "--trainer.enable_progress_bar=false"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: python -m nlicot {args[0]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, str]:
    """The facts a reader needs to compare figures across machines: cores, CPU model, RAM, library versions."""
    import torch

    cpu = platform.processor() or "unknown"
    mem_gib = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))  # fmt: skip
        mem_gib = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return {
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "cpu": cpu,
        "ram": mem_gib,
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- the under-trained SFT start (GRPO, self-consistency)
SYNTH = REPO / "data" / "synth"
#: Greedy evaluation budget: a synthetic answer is 49-63 tokens, so 160 only cuts answers that ramble.
EVAL_MAX_NEW_TOKENS = 160
#: SFT on the learnable set with test accuracy in (or near) the 60-80 % band, so that what comes after it (GRPO,
#: voting) has room to show an effect: the demo recipe (configs/demo.yaml on the pretrained ``tiny-nli`` base) cut
#: to ``steps`` optimizer steps (its cosine then ends there), every setting that matters spelled out so that a later
#: change of the demo config does not silently change this start. (Round 3's 600 steps gave 0.781 on the earlier
#: thoughts; with the "a is not b" thoughts 300 steps give 0.807 and the full 500 ~0.93; benchmarks/README.md.)
UNDERTRAINED_SFT_STEPS = 300


def undertrained_sft(steps: int = UNDERTRAINED_SFT_STEPS) -> list[str]:
    """The ``fit`` arguments of the under-trained SFT start (the list, and so its cache key, is the same at 300
    steps as when it was a constant)."""
    return [
        "--config", "configs/demo.yaml",
        "--model.model_name_or_path=tiny-nli",
        f"--data.train_path={SYNTH / 'train.jsonl'}", f"--data.val_path={SYNTH / 'val.jsonl'}",
        f"--data.test_path={SYNTH / 'test.jsonl'}",
        f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", "--trainer.limit_val_batches=0",
        "--generation_eval.rows=0", "--trainer.accumulate_grad_batches=1", "--data.micro_batch_size=2",
        "--data.packing=true", "--model.lora.r=64", "--model.lora.alpha=128", "--model.lora.dropout=0.0",
        "--model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head,embed_tokens]",
        "--model.optim.learning_rate=3e-3", "--model.schedule.warmup_steps=10", "--model.schedule.min_lr_ratio=0.1",
        "--seed_everything=42", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip


def undertrained_sft_adapter(steps: int = UNDERTRAINED_SFT_STEPS) -> tuple[Path, float]:
    """The adapter folder of :func:`undertrained_sft` and the seconds its training took (trained once, cached by
    the recipe's hash under ``.cache/bench``)."""
    import hashlib
    import json
    import subprocess
    import sys
    import time

    from nlicot.atomic import atomic_write_text

    recipe = undertrained_sft(steps)
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]
    root = REPO / ".cache" / "bench" / f"sft-undertrained-{key}"
    done = root / "done.json"
    if done.is_file():
        return root / "ckpt" / "adapter", json.loads(done.read_text())["seconds"]
    if root.exists():
        import shutil

        shutil.rmtree(root)  # an interrupted earlier attempt: its checkpoints would block a fresh fit
    cmd = [sys.executable, "-m", "nlicot", "fit", *recipe, f"--checkpoint.dirpath={root / 'ckpt'}",
           f"--trainer.logger.init_args.save_dir={root / 'tb'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: under-trained SFT run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    atomic_write_text(done, json.dumps({"seconds": seconds, "recipe": recipe}))
    return root / "ckpt" / "adapter", seconds


def sft_start(adapter: Path | None, steps: int = UNDERTRAINED_SFT_STEPS) -> tuple[Path, float | None]:
    """The SFT adapter a benchmark starts from: ``--adapter`` when given (seconds unknown), else the cached
    :func:`undertrained_sft` run of ``steps`` steps (trained on first use)."""
    return (adapter, None) if adapter is not None else undertrained_sft_adapter(steps)


def add_start_arguments(parser: Any) -> None:
    """``--adapter`` / ``--sft-steps``: the SFT start that :func:`sft_start` resolves, the same in every script."""
    parser.add_argument("--adapter", type=Path, default=None, help="SFT adapter folder (default: the shared recipe)")
    parser.add_argument("--sft-steps", type=int, default=UNDERTRAINED_SFT_STEPS,
                        help="length of the shared under-trained SFT start (ignored with --adapter)")


def greedy_test_eval(adapter: Path | None, rows: int | None = None, split: str = "test", data_dir: Path = SYNTH,
                     base: str | None = None) -> dict[str, Any]:
    """Greedy accuracy (parse failures count as wrong, overall and by phenomenon), parse rate and mean generated
    tokens of an adapter folder on the first ``rows`` rows of ``<data_dir>/<split>.jsonl``; ``adapter=None`` with
    ``base`` = the base model alone (zero-shot, same prompt), frozen in NF4 as in training."""
    import json

    from nlicot.args import GenerationConfig
    from nlicot.corpus import load_rows
    from nlicot.prompt import encode_prompts
    from nlicot.sft import NLICoTModule

    if adapter is not None:
        base = json.loads((adapter / "nlicot.json").read_text())["base_model"]
    module = NLICoTModule(base, compute_dtype="float32", gradient_checkpointing=False,
                          adapter_path=None if adapter is None else str(adapter),
                          generation=GenerationConfig(max_new_tokens=EVAL_MAX_NEW_TOKENS, batch_size=32))
    module.configure_model()
    path = data_dir / f"{split}.jsonl"
    data = load_rows(str(path), split=split)[:rows]
    ids = encode_prompts(module.tokenizer, [r["premise"] for r in data], [r["hypothesis"] for r in data])
    recs = module.predict_records([dict(r, prompt_ids=p) for r, p in zip(data, ids, strict=True)])
    n = len(recs)
    phenomenon = {r["id"]: r["phenomenon"] for r in map(json.loads, path.open())}
    by_kind: dict[str, list[bool]] = {}
    for rec in recs:
        by_kind.setdefault(phenomenon[rec["id"]], []).append(rec["predicted_label"] == rec["label"])
    return {
        "rows": n,
        "accuracy": sum(r["predicted_label"] == r["label"] for r in recs) / n,
        "parse_rate": sum(r["parse_ok"] for r in recs) / n,
        "generated_tokens": sum(r["generated_tokens"] for r in recs) / n,
        "predicted": {str(k): sum(r["predicted_label"] == k for r in recs) for k in (0, 1, None)},  # a collapse shows
        "by_phenomenon": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())},
    }


def quiet_logs() -> None:
    """Benchmarks print their own figures; library progress bars and warnings would bury them."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per model load
    logging.getLogger("lightning").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
