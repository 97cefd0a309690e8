"""benchmarks/label_only.py --smoke: the wiring of one SFT-then-GRPO configuration, the val/test protocol and the
data_gen cost line, in one short run (a wiring check, not a measurement: the script says so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_prints_the_table_and_the_cost_line(tmp_path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "benchmarks/label_only.py", "--smoke", "--seeds", "0", "--configs", "c",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SMOKE: not a measurement" in proc.stdout
    assert "| (c) | (2, 0.003) | (2, 0.0003) |" in proc.stdout
    saved = json.loads(out.read_text())
    (c,) = saved["results"]
    assert len(c["test_accuracy"]) == 1 and 0 <= c["val_accuracy"] <= 1 and c["tried"][0]["within_budget"]
    for part in ("all", "tenth"):
        assert all(v.startswith("£") for v in saved["cost"][part].values())
    full, tenth = (float(saved["cost"][p]["generate"].lstrip("£")) for p in ("all", "tenth"))
    assert tenth < full  # 20 rows cost less than 200
