"""nlicot teaches the task: a seeded run of the demo recipe (frozen NF4 ``tiny-nli`` + LoRA) on the synthetic set
beats chance by far on held-out combinations (the shuffled-label control is test_learning_control.py).

Real CLI processes, greedy generation, parse failures counted as wrong. The bound is loose on purpose (the
benchmark, benchmarks/learning.py, reports the exact figures and the wall time): measured 0.92 on these 100 rows
(± 0.03 at 1 σ for 100 rows), chance is 0.5 ± 0.05, so ≥ 0.8 is far from both.
"""

from __future__ import annotations

import pytest
from heldout_fit import REPO, fit_and_score, heldout_rows


@pytest.mark.slow
def test_demo_recipe_learns_heldout_combinations(tmp_path):
    """The demo config as shipped (500 steps); measured 0.895 on all 420 test rows with base v3, 0.931 with v2
    (benchmarks/README.md)."""
    test = heldout_rows(tmp_path)
    accuracy, parse_rate = fit_and_score(tmp_path, REPO / "data" / "synth" / "train.jsonl", test, steps=None)
    assert parse_rate >= 0.9, parse_rate
    assert accuracy >= 0.8, accuracy  # 6 sigma above chance, 4 sigma below the measure
