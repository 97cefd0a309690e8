"""What several benchmark scripts share: the offline environment, the machine description and peak memory.

Imported as ``_common`` by scripts run as ``python benchmarks/<name>.py`` (their folder is then on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Same defaults as the tests: one tiny-model cache per checkout, never the network.
os.environ.setdefault("NLICOT_CACHE", str(REPO / ".cache" / "nlicot"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def sft_checkpoint(config: str, steps: int, *extra: str) -> Path:
    """``last.ckpt`` of ``python -m nlicot fit --config <config>`` stopped after ``steps`` optimizer steps.

    For the benchmarks that start from a deliberately under-trained SFT adapter (self-consistency, GRPO): the
    same arguments give the same seeded run, so it is trained once and cached under ``.cache/benchmarks``, keyed
    by the config's text, the steps and ``extra`` CLI arguments. The PEFT adapter folder sits next to the
    checkpoint (``…/checkpoints/adapter``). Built in a temporary folder and renamed, so a failed run leaves nothing.
    """
    import hashlib
    import json
    import shutil
    import subprocess
    import sys

    text = (REPO / config).read_text()
    key = hashlib.sha256(json.dumps([config, text, steps, list(extra)]).encode()).hexdigest()[:12]
    root = REPO / ".cache" / "benchmarks" / f"sft-{Path(config).stem}-{steps}-{key}"
    ckpt = root / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "nlicot", "fit", "--config", config, f"--trainer.max_steps={steps}",
           "--trainer.enable_progress_bar=false", f"--checkpoint.dirpath={tmp / 'checkpoints'}",
           f"--trainer.logger.init_args.save_dir={tmp / 'tb'}", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"SFT run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    tmp.rename(root)
    return ckpt
