"""nlicot teaches the task: a short seeded run of the demo recipe (frozen NF4 ``tiny-nli`` + LoRA) on the synthetic
set beats chance by far on held-out combinations, and the same run on shuffled labels stays at chance.

Real CLI processes, greedy generation, parse failures counted as wrong. Bounds are loose on purpose (the
benchmark, benchmarks/learning.py, reports the exact figures and the wall time): 100 test rows give a chance
accuracy of 0.5 ± 0.05 (1 σ), so [0.3, 0.7] for the control and ≥ 0.8 for the real labels never flake.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 60
SHORT = [f"--trainer.max_steps={STEPS}", "--trainer.limit_val_batches=0", "--generation_eval.rows=0",
         "--trainer.enable_progress_bar=false", "--model.warmup_steps=5"]


def _cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "nlicot", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _fit_and_score(root: Path, train: Path, test: Path) -> tuple[float, float]:
    _cli("fit", "--config", "configs/demo.yaml", *SHORT, f"--data.train_path={train}",
         f"--checkpoint.dirpath={root / 'ckpt'}", f"--trainer.logger.init_args.save_dir={root / 'tb'}")
    _cli("predict", "--config", "configs/demo.yaml", f"--ckpt_path={root / 'ckpt' / 'last.ckpt'}",
         f"--data.predict_path={test}", f"--predictions.output_dir={root / 'pred'}", "--trainer.enable_progress_bar=false")
    recs = [json.loads(line) for line in (root / "pred" / "predictions.jsonl").read_text().splitlines()]
    accuracy = sum(r["predicted_label"] == r["label"] for r in recs) / len(recs)
    return accuracy, sum(r["parse_ok"] for r in recs) / len(recs)


@pytest.fixture(scope="module")
def test_rows(tmp_path_factory) -> Path:
    """100 held-out rows, every phenomenon represented (the test split interleaves them)."""
    path = tmp_path_factory.mktemp("data") / "test100.jsonl"
    path.write_text("".join((REPO / "data" / "synth" / "test.jsonl").read_text().splitlines(True)[:100]))
    return path


@pytest.mark.slow
def test_demo_recipe_learns_heldout_combinations(tmp_path, test_rows):
    accuracy, parse_rate = _fit_and_score(tmp_path, REPO / "data" / "synth" / "train.jsonl", test_rows)
    assert parse_rate >= 0.9, parse_rate
    assert accuracy >= 0.8, accuracy


@pytest.mark.slow
def test_shuffled_labels_stay_at_chance(tmp_path, test_rows):
    rows = [json.loads(line) for line in (REPO / "data" / "synth" / "train.jsonl").read_text().splitlines()]
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_kind[r["phenomenon"]].append(i)
    rng = random.Random(0)
    for idx in by_kind.values():  # permute (label, thought) within a phenomenon: the thought moves with its label
        moved = [(rows[i]["label"], rows[i]["thought_process"]) for i in idx]
        rng.shuffle(moved)
        for i, (label, thought) in zip(idx, moved, strict=True):
            rows[i]["label"], rows[i]["thought_process"] = label, thought
    train = tmp_path / "shuffled.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    accuracy, _ = _fit_and_score(tmp_path, train, test_rows)
    assert 0.3 <= accuracy <= 0.7, accuracy
