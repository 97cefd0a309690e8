"""Fit a recipe through the real CLI, then greedy-predict held-out rows and score them: the helper of the two
learning tests (test_learning.py, test_learning_control.py), which sit in two files so that xdist runs them on
two workers at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.limit_val_batches=0", "--generation_eval.rows=0", "--trainer.enable_progress_bar=false"]


def _cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "nlicot", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]


def heldout_rows(folder: Path, n: int = 100) -> Path:
    """The first ``n`` test rows (the test split interleaves the phenomena, so every one is represented)."""
    path = folder / f"test{n}.jsonl"
    path.write_text("".join((REPO / "data" / "synth" / "test.jsonl").read_text().splitlines(True)[:n]))
    return path


def fit_and_score(root: Path, train: Path, test: Path, steps: int | None) -> tuple[float, float]:
    """Fit configs/demo.yaml on ``train`` (``steps`` optimizer steps, None = the config's), then greedy predict
    ``test``; returns accuracy (parse failures wrong) and parse rate."""
    budget = [] if steps is None else [f"--trainer.max_steps={steps}"]
    _cli("fit", "--config", "configs/demo.yaml", *QUIET, *budget, f"--data.train_path={train}",
         f"--checkpoint.dirpath={root / 'ckpt'}", f"--trainer.logger.init_args.save_dir={root / 'tb'}")
    _cli("predict", "--config", "configs/demo.yaml", f"--ckpt_path={root / 'ckpt' / 'last.ckpt'}",
         f"--data.predict_path={test}", f"--predictions.output_dir={root / 'pred'}", "--trainer.enable_progress_bar=false")
    recs = [json.loads(line) for line in (root / "pred" / "predictions.jsonl").read_text().splitlines()]
    accuracy = sum(r["predicted_label"] == r["label"] for r in recs) / len(recs)
    return accuracy, sum(r["parse_ok"] for r in recs) / len(recs)
