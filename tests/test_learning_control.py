"""The control of test_learning.py: the same recipe on shuffled training labels stays at chance on the held-out
rows, so the accuracy there comes from the signal, not from the format or the test rows.

100 rows give a chance accuracy of 0.5 ± 0.05 (1 σ): ≤ 0.7 never flakes.
"""

from __future__ import annotations

import json

import pytest
from heldout_fit import REPO, fit_and_score, heldout_rows

from nlicot.offline.synthetic_task import shuffle_labels


@pytest.mark.slow
def test_shuffled_labels_stay_at_chance(tmp_path):
    rows = [json.loads(line) for line in (REPO / "data" / "synth" / "train.jsonl").read_text().splitlines()]
    train = tmp_path / "shuffled.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in shuffle_labels(rows, seed=0)))
    accuracy, parse_rate = fit_and_score(tmp_path, train, heldout_rows(tmp_path), steps=120)  # chance needs no long run
    assert accuracy <= 0.7, accuracy  # parse failures count as wrong, so only the upper side is a bound here
    if parse_rate >= 0.3:  # among the answers that parse, a coin flip
        assert 0.3 <= accuracy / parse_rate <= 0.7, (accuracy, parse_rate)
