"""Fixtures for the data_gen tests: a loopback fake Mistral API, input rows, and the CLI run in-process."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_api import FakeConfig, FakeMistral

from data_gen.cli import main

#: The API key the tests use; it must never appear in any output file or log.
KEY = "sk-test-0f1e2d3c4b5a-NEVER-LOG-ME"
PRICES = Path(__file__).resolve().parents[2] / "configs" / "data_gen" / "prices.yaml"


@pytest.fixture
def fake_api() -> Iterator[Callable[..., FakeMistral]]:
    """``fake_api(rate_500=0.1, ...)`` starts a fake server (key checked) that is stopped after the test."""
    servers: list[FakeMistral] = []

    def start(**config: Any) -> FakeMistral:
        config.setdefault("api_key", KEY)
        server = FakeMistral(FakeConfig(**config)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    monkeypatch.delenv("MISTRAL_SERVER_URL", raising=False)
    monkeypatch.delenv("MISTRAL_DEBUG", raising=False)


def _rows(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "premise": f"Premise {i}: a child in a blue shirt plays with {i} red balls in a park.",
         "hypothesis": f"Hypothesis {i}: a kid is outside.", "label": i % 2}
        for i in range(n)
    ]


@pytest.fixture
def rows_file(tmp_path: Path) -> Callable[..., Path]:
    """``rows_file(n)`` writes n valid input rows as CSV (or JSONL) and returns the path."""

    def write(n: int, fmt: str = "csv", name: str = "rows") -> Path:
        rows = _rows(n)
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "csv":
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


def api_flags(server: FakeMistral, **overrides: Any) -> list[str]:
    """Flags for a fast run against ``server``: short backoffs and timeouts, no rate limit, no progress bar."""
    flags: dict[str, Any] = {
        "server-url": server.url, "prices": str(PRICES), "backoff-base-s": 0.01, "backoff-max-s": 0.05,
        "requests-per-second": "null", "timeout-s": 2.0, "concurrency": 8, "batch-poll-s": 0.01,
    }
    flags.update({k.replace("_", "-"): v for k, v in overrides.items()})
    out = ["--quiet"]
    for k, v in flags.items():
        if v is True:
            out.append(f"--{k}")
        elif v is not False:
            out += [f"--{k}", str(v)]
    return out


@pytest.fixture
def dg() -> Callable[..., int]:
    """``dg("generate", "--input", ...)`` runs the CLI in-process and returns its exit status."""
    return lambda *argv: main([str(a) for a in argv])


@pytest.fixture
def flags() -> Callable[..., list[str]]:
    return api_flags


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def api_key() -> str:
    return KEY


@pytest.fixture
def prices() -> Path:
    return PRICES


@pytest.fixture
def jsonl() -> Callable[[Path], list[dict[str, Any]]]:
    return read_jsonl
