"""benchmarks/gpu_qlora.py and gpu_smoke.py without a GPU: they skip cleanly, the random-model writer loads as a
real checkpoint, the FLOP formulas equal torch's own FLOP counter on a real forward + backward and a hand count on
Mistral-7B's shape, and the dry runs train (both arms; fit + resume) on the CPU, so CI checks the wiring that the
GPU run depends on."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_qlora.py"
SMOKE = REPO / "benchmarks" / "gpu_smoke.py"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def load_benchmark(monkeypatch, script: Path = SCRIPT):
    monkeypatch.syspath_prepend(str(script.parent))  # as when run as a script: its folder holds _common
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benchmark would run")
@pytest.mark.parametrize("script", [SCRIPT, SMOKE], ids=lambda p: p.name)
def test_without_cuda_it_says_skipped_and_exits_0(script):
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=120)
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
def test_dry_run_trains_both_arms_and_counts_the_full_size_adapter(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--steps", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    # best.yaml's LoRA (r=32 on q, k, v, o) on Mistral-7B-v0.3's shape: q, o are 4096->4096, k, v 4096->1024
    assert f"{32 * (2 * 32 * (4096 + 4096) + 2 * 32 * (4096 + 1024)):,} LoRA parameters" in out
    # arm, load s, warm-up s, steps s, tokens/s, ...
    rows = {m[1]: float(m[2]) for m in re.finditer(r"^(nlicot|trl)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)\s", out, re.M)}
    assert set(rows) == {"nlicot", "trl"} and min(rows.values()) > 0
    assert "speed-up nlicot / TRL" in out and "dry run" in out
    assert "6N would say 42.84 G" in out and "model 29.02 G" in out  # the formulas on Mistral-7B's shape
    arms = {arm: json.loads((tmp_path / f"{arm}.json").read_text()) for arm in ("nlicot", "trl")}  # one file each
    for r in arms.values():
        assert r["load_s"] > 0 and r["warmup_s"] > 0 and r["seconds"] > 0 and r["timed"]["tokens"] > 0
        assert r["timed"]["supervised"] < r["timed"]["tokens"] <= r["timed"]["slots"]
    summary = json.loads((tmp_path / "gpu_qlora.json").read_text())
    assert summary["nlicot"]["model_tflops"] > 0 and summary["nlicot"]["mfu"] is None  # no GPU peak on a CPU


@pytest.mark.parametrize("checkpointing", [False, True])
def test_flop_formulas_equal_torchs_flop_counter_on_a_real_step(monkeypatch, checkpointing):
    """Model FLOPs = what a frozen base + LoRA step executes; hardware FLOPs add the checkpoint recompute. Eager
    attention with a full 4-D mask, so the counter sees the attention matmuls over all rows x width² pairs."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM, MistralConfig

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import _qlora_cost as cost

    config = MistralConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=300, attn_implementation="eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.enable_input_require_grads()  # every layer's input gradient, as the formula counts
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"))
    model.train()
    rows, width = 2, 24
    mask = torch.zeros(rows, 1, width, width).masked_fill(~torch.ones(width, width, dtype=torch.bool).tril(), -1e9)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 300, (rows, width)), attention_mask=mask).logits.float().sum().backward()
    shape = cost.shape_of(config, 4, LORA_TARGETS)
    formula = cost.hardware_flops if checkpointing else cost.model_flops
    assert formula(shape, rows * width, rows * width, rows * width * width) == counter.get_total_flops()


def test_flop_and_memory_formulas_on_mistral_7b_by_hand(monkeypatch):
    bench = load_benchmark(monkeypatch)
    import _qlora_cost as cost

    shape = cost.shape_of(bench.mistral_config("7b", None), 32, LORA_TARGETS)
    h, kv, i, layers, vocab = 4096, 1024, 14336, 32, 32768
    assert shape.linear == layers * (2 * h * h + 2 * h * kv + 3 * h * i) == 6_979_321_856
    assert shape.recomputed == shape.linear - layers * i * h
    assert shape.lora == layers * 32 * (2 * (h + h) + 2 * (h + kv)) == 27_262_976
    # one 512-token example, 300 supervised tokens: 131,328 causal pairs
    pairs = cost.causal_pairs([512])
    assert pairs == 512 * 513 // 2
    attention_fwd = 2 * 2 * h * layers * pairs  # QK^T and AV, 2 FLOPs per multiply-add, h = 32 heads x 128
    by_hand = (2 + 2) * shape.linear * 512 + (2 + 4) * shape.lora * 512 + 3 * attention_fwd + (2 + 2) * h * vocab * 300
    assert cost.model_flops(shape, 512, 300, pairs) == by_hand
    assert cost.model_flops(shape, 512, 300, pairs) < 0.7 * 6 * (shape.linear + h * vocab) * 512  # 6N overstates
    recompute = 2 * shape.recomputed * 512 + 2 * shape.lora * 512 + attention_fwd
    assert cost.hardware_flops(shape, 512, 300, pairs) == by_hand + recompute
    assert cost.peak_tflops("NVIDIA H200") == 989.4 and cost.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert cost.peak_tflops("Some GPU") is None
    # best.yaml's comment: micro-batch 16 x 512 tokens, 60 % supervised
    memory = cost.memory_estimate(shape, 16, 512, 0.6)
    gib = 2**30
    assert memory["nf4"] == pytest.approx(shape.linear * (0.5 + 1 / 64 + 4 / 16384))
    assert memory["checkpoints"] == layers * 16 * 512 * h * 2 == 2 * gib
    assert memory["logits"] == pytest.approx(0.6 * 16 * 512 * vocab * 14)
    assert 10 * gib < memory["peak"] < 11 * gib


@pytest.mark.slow
def test_smoke_dry_run_checks_isolation_fit_resume_and_generation(tmp_path):
    proc = subprocess.run([sys.executable, str(SMOKE), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checks = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert set(checks) == {"environment", "isolation:sdpa", "isolation:eager", "fit", "generation"}
    assert all(c["ok"] for c in checks.values())
    assert checks["isolation:sdpa"]["gap"] < 1e-4 < checks["isolation:sdpa"]["leak_control"]
    assert checks["fit"]["resumed_minus_unbroken"] == 0.0  # on the CPU the resumed run is the unbroken one
    assert "5/5 checks ok" in proc.stdout
