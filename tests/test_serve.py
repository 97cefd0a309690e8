"""An exported model serves the prompt it was trained on: `transformers serve` on the folder `python -m nlicot.export`
writes (a tiny-nli demo adapter trained two steps, merged) gives the same greedy answers as `nlicot predict` on the
same weights, though the server builds the prompt from the folder's chat template and nlicot from its own code."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nlicot import prompt

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
QUICK = ["--data.micro_batch_size=2", "--trainer.limit_val_batches=0", "--model.schedule.warmup_steps=1",
         "--trainer.enable_progress_bar=false"]
MAX_TOKENS = 24


def run(*args: str, module: str = "nlicot") -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.load(reply)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    run("fit", "--config", "configs/demo.yaml", *QUICK, "--trainer.max_steps=2", f"--trainer.default_root_dir={root}")
    out = root / "export"
    run("--ckpt_path", str(root / "demo" / "checkpoints" / "last.ckpt"), "--output_dir", str(out),
        "--dtype", "float32", module="nlicot.export")
    return out


def test_export_records_the_prompt(exported):
    meta = json.loads((exported / "nlicot.json").read_text())
    assert meta["prompt"]["family"] == "mistral-v3" and meta["prompt"]["instruction"] == prompt.INSTRUCTION
    assert meta["prompt"]["chat_template"] == prompt.MISTRAL_V3_CHAT_TEMPLATE
    assert json.loads((exported / "generation_config.json").read_text())["eos_token_id"] == 2


def test_transformers_serve_answers_as_nlicot_predict(exported, tmp_path):
    rows = [json.loads(line) for line in (REPO / "data/synth/test.jsonl").read_text().splitlines()[:3]]
    inputs = tmp_path / "rows.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The merged weights as nlicot's base (a fresh LoRA is the identity), unquantized like the served model.
    run("predict", "--config", "configs/demo.yaml", f"--model.model_name_or_path={exported}",
        "--model.quantization=none", f"--model.generation.max_new_tokens={MAX_TOKENS}", f"--data.predict_path={inputs}",
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false")
    ours = [json.loads(line) for line in (tmp_path / "run" / "demo" / "predictions" / "predictions.jsonl").open()]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(exported),
                               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline, "transformers serve did not come up in 300 s"
                time.sleep(1)
        for row, rec in zip(rows, ours, strict=True):
            reply = post(f"http://127.0.0.1:{port}/v1/chat/completions", {
                "model": str(exported), "temperature": 0, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": prompt.user_message(row["premise"], row["hypothesis"])}]})
            served = reply["choices"][0]["message"]["content"]
            assert rec["id"] == row["id"] and rec["generated_tokens"] > 0
            if rec["finish_reason"] == "json":  # nlicot stops at the closing brace; the server at EOS
                assert served.startswith(rec["raw"]), (served, rec["raw"])
            else:
                assert served == rec["raw"], (served, rec["raw"])
    finally:
        server.terminate()
        server.wait(timeout=60)
