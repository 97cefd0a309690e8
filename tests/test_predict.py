"""`predict` end to end from a checkpoint, generation-based evaluation in `validate`, and `nlicot.export`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here runs the CLI on a trained checkpoint

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, module: str = "nlicot") -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    cli("fit", "--config", "configs/demo_handwritten.yaml", "--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
        f"--checkpoint.dirpath={root / 'ckpt'}", f"--trainer.logger.init_args.save_dir={root / 'tb'}")
    return root


@pytest.mark.slow
def test_predict_writes_ordered_records_and_metrics(trained, tmp_path):
    inputs = tmp_path / "pairs.csv"
    inputs.write_text("id,premise,hypothesis,label\nb,A long premise about three cats sleeping on a warm mat.,"
                      "Cats rest.,1\na,Rain.,It is dry.,0\nc,Short.,No label here.,\n")
    out = tmp_path / "out"
    proc = cli("predict", "--config", "configs/demo_handwritten.yaml", f"--ckpt_path={trained / 'ckpt' / 'last.ckpt'}",
               f"--data.predict_path={inputs}", f"--predictions.output_dir={out}", "--model.generation.max_new_tokens=12",
               "--data.predict_batch_size=2", "--trainer.enable_progress_bar=false")
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["b", "a", "c"]  # input order, although batches were length-sorted
    assert [r["label"] for r in recs] == [1, 0, None]
    for r in recs:
        assert set(r) >= {"premise", "hypothesis", "predicted_label", "thought_process", "parse_ok",
                          "thought_tokens", "raw"}
        assert r["predicted_label"] in (0, 1, None) and r["parse_ok"] == (r["predicted_label"] is not None)
        assert 0 < r["generated_tokens"] <= 12
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 2  # only labelled rows are scored
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "2 predictions" not in proc.stdout and "3 predictions" in proc.stdout


@pytest.mark.slow
def test_validate_logs_generation_metrics(trained, tmp_path):
    cli("validate", "--config", "configs/demo_handwritten.yaml", f"--ckpt_path={trained / 'ckpt' / 'last.ckpt'}",
        "--generation_eval.rows=4", "--model.generation.max_new_tokens=8", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (version,) = (tmp_path / "demo_handwritten").glob("version_*")
    acc = EventAccumulator(str(version))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/loss", "val/token_accuracy", "val/accuracy", "val/precision", "val/recall", "val/f1",
            "val/parse_rate"} <= tags
    assert "val/samples/text_summary" in acc.Tags()["tensors"]
    assert "val/confusion_matrix" in acc.Tags()["images"]


@pytest.mark.slow
def test_export_merged_equals_adapter_model(trained, tmp_path):
    out = tmp_path / "merged"
    cli("--ckpt_path", str(trained / "ckpt" / "last.ckpt"), "--output_dir", str(out), "--dtype", "float32",
        module="nlicot.export")
    from transformers import AutoModelForCausalLM

    from nlicot.export import load_module

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    unmerged = load_module(str(trained / "ckpt" / "last.ckpt"), None, None, "none", "float32")
    ids = torch.tensor([[1, 3, 1183, 1032, 4, 1098]])
    with torch.no_grad():
        a = merged(input_ids=ids).logits
        b = unmerged.model(input_ids=ids).logits
    assert (a - b).abs().max() < 1e-3
    from nlicot.hub import resolve_model_path

    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny")).eval()(input_ids=ids).logits
    assert (a - base).abs().max() > 1e-3  # the trained adapter is really folded in
    proc = subprocess.run([sys.executable, "-m", "nlicot.export", "--ckpt_path", str(tmp_path / "missing.ckpt"),
                           "--output_dir", str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "missing.ckpt: checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
