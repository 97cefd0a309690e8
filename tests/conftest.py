"""Shared test set-up: one tiny-model cache per checkout, no network, deterministic CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Build the offline tiny model once per checkout (cheap: ~3 s), not once per test.
os.environ.setdefault("NLICOT_CACHE", str(REPO / ".cache" / "nlicot"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_path() -> str:
    from nlicot.hub import resolve_model_path

    return resolve_model_path("tiny")


@pytest.fixture(scope="session")
def tokenizer():
    from nlicot.hub import load_tokenizer

    return load_tokenizer("tiny")
