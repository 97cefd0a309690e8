"""benchmarks/gpu_qlora.py without a GPU: it skips cleanly, its random-model writer loads as a real checkpoint,
and its dry run trains both arms (nlicot and the TRL baseline) a few steps on the CPU, so CI checks the wiring
that the GPU run depends on."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_qlora.py"


def load_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script: its folder holds _common
    spec = importlib.util.spec_from_file_location("gpu_qlora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benchmark would run")
def test_without_cuda_it_says_skipped_and_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("skipped:") and "CUDA" in proc.stdout


def test_random_model_is_written_layer_by_layer_and_loads_in_nf4(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bench = load_benchmark(monkeypatch)
    config = bench.mistral_config("tiny", 3)
    bench.write_random_model(config, tmp_path, torch.device("cpu"))
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 3 + 1  # one shard per layer + embeddings/head
    assert bench.model_matches(tmp_path, config) and not bench.model_matches(tmp_path, bench.mistral_config("tiny", 2))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32), device_map={"": "cpu"})
    assert len(model.model.layers) == 3
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert torch.equal(model.model.norm.weight.float(), torch.ones(config.hidden_size))
    std = model.lm_head.weight.float().std().item()
    assert 0.018 < std < 0.022  # N(0, 0.02), not zeros or an uninitialised buffer


@pytest.mark.slow
def test_dry_run_trains_both_arms_and_counts_the_full_size_adapter():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--steps", "2"], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    # best.yaml's LoRA (r=32 on q, k, v, o) on Mistral-7B-v0.3's shape: q, o are 4096->4096, k, v 4096->1024
    assert f"{32 * (2 * 32 * (4096 + 4096) + 2 * 32 * (4096 + 1024)):,} LoRA parameters" in out
    rows = {m[1]: float(m[2]) for m in re.finditer(r"^(nlicot|trl)\s+(\d+)\s", out, re.M)}
    assert set(rows) == {"nlicot", "trl"} and min(rows.values()) > 0
    assert "speed-up nlicot / TRL" in out and "dry run" in out
