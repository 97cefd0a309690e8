"""Setup problems are found before anything slow is loaded, in the order a user meets them (accelerator, corpus
files, model), each as one ``error:`` line that says what to do; the mission's own command on this CPU machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from nlicot import preflight
from nlicot.preflight import PreflightError

BEST = ["fit", "--config", "configs/best.yaml"]
SYNTH = ["--data.train_path=data/synth/train.jsonl", "--data.val_path=data/synth/val.jsonl"]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")


def nlicot_error(repo, *args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nlicot", *args], cwd=repo, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0], time.perf_counter() - start


@pytest.mark.slow
@no_gpu
def test_best_yaml_without_a_gpu_names_the_setting_and_the_cpu_alternative(repo):
    error, _ = nlicot_error(repo, *BEST)
    assert "trainer.accelerator=gpu" in error and "--trainer.accelerator cpu" in error


@pytest.mark.slow
def test_best_yaml_on_the_cpu_without_a_corpus_says_how_to_make_it(repo):
    error, _ = nlicot_error(repo, *BEST, "--trainer.accelerator=cpu")
    assert "data.train_path=corpus/train.jsonl" in error and "data.val_path=corpus/val.jsonl" in error
    assert "python -m data_gen run --config configs/data_gen/pipeline.yaml" in error


@pytest.mark.slow
@pytest.mark.parametrize("offline", ["1", "0"])
def test_best_yaml_with_the_hub_out_of_reach_names_the_model_and_the_way_out_quickly(repo, offline):
    """HF_HUB_OFFLINE=1 (the test default), and online mode on this machine, where the hub does not resolve."""
    error, seconds = nlicot_error(repo, *BEST, "--trainer.accelerator=cpu", *SYNTH,
                                  env={"HF_HUB_OFFLINE": offline, "HF_HUB_CACHE": str(repo / ".no-hub-cache")})
    assert "mistralai/Mistral-7B-v0.3" in error and "--model.model_name_or_path /local/folder" in error
    assert ("HF_HUB_OFFLINE" in error) == (offline == "1")
    assert seconds < 60  # the CLI's imports, not a download's retries


def test_accelerator_check():
    preflight.check_accelerator("cpu", 1)
    preflight.check_accelerator("auto", "auto")
    if not torch.cuda.is_available():
        with pytest.raises(PreflightError, match="trainer.accelerator=cuda .* --trainer.accelerator cpu"):
            preflight.check_accelerator("cuda", 1)
    else:
        with pytest.raises(PreflightError, match="trainer.devices=999"):
            preflight.check_accelerator("gpu", 999)


def test_corpus_check_names_every_missing_file_and_ignores_dataset_names(tmp_path):
    present = tmp_path / "train.jsonl"
    present.write_text("")
    preflight.check_corpus({"train": str(present), "val": None, "test": "org/some-dataset#test"})
    with pytest.raises(PreflightError) as e:
        preflight.check_corpus({"train": str(tmp_path / "a.jsonl"), "val": str(tmp_path / "b.csv")})
    assert "data.train_path=" in str(e.value) and "data.val_path=" in str(e.value)


def test_model_check_local_names(tmp_path):
    preflight.check_model("tiny")
    (tmp_path / "model").mkdir()
    with pytest.raises(PreflightError, match="no config.json"):
        preflight.check_model(str(tmp_path / "model"))
    (tmp_path / "model" / "config.json").write_text("{}")
    preflight.check_model(str(tmp_path / "model"))
    with pytest.raises(PreflightError, match="no such folder"):
        preflight.check_model(str(tmp_path / "elsewhere"))
    with pytest.raises(PreflightError, match="no installed package 'not_a_package'"):
        preflight.check_model("pkg:not_a_package/model.gguf")
    with pytest.raises(PreflightError, match="neither a folder nor a hub id"):
        preflight.check_model("two words")


def test_model_check_hub_id_against_a_closed_port(monkeypatch, tmp_path):
    """Online mode with an endpoint that refuses connections: an error naming it, well within the probe timeout."""
    from huggingface_hub import constants

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(PreflightError, match=f"org/model: cannot reach http://127.0.0.1:{port}"):
        preflight.check_model("org/model")
    assert time.perf_counter() - start < preflight.PROBE_TIMEOUT_S
