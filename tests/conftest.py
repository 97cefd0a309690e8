"""Shared test set-up: one tiny-model cache per checkout, no network, one CPU thread per xdist worker."""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Build the offline tiny models once per checkout, not once per test.
os.environ.setdefault("NLICOT_CACHE", str(REPO / ".cache" / "nlicot"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: one thread each (inherited by the training subprocesses), never oversubscribed.
    # Small-model steps scale poorly with threads (tiny-nli pretraining: 1.5x from 2 threads), so two
    # one-thread workers finish the suite sooner than one two-thread process.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


#: Files that run longest (seconds on one thread, measured in the suite): they are sent to the xdist workers first,
#: so that the short files fill the other worker meanwhile instead of leaving it idle at the end. Each worker
#: starts with two files (xdist's loadfile prefetch): with two workers, the 1st and 3rd go to one of them.
LONGEST_FIRST = ("test_learning.py",  # ~425 s: the 500-step demo fit
                 "test_training.py",  # ~250 s: SIGKILL / resume runs
                 "test_learning_control.py",  # ~130 s
                 "test_preemption.py",  # ~100 s: four real SIGTERMs
                 "test_label_only_recipe.py",  # ~60 s: SFT then GRPO, each resumed
                 "test_ddp.py")  # ~70 s: real 2-process DDP


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist, the controller builds the offline models before any worker starts: else two workers would
    each build the same one at the same time and keep only one copy (seconds from the shipped weights, minutes
    where ``tiny-nli`` must be pretrained)."""
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    from nlicot.hub import is_built, resolve_model_path
    from nlicot.offline.registry import offline_models

    for name in offline_models():
        if is_built(name):
            continue
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # pretraining's progress lines
            resolve_model_path(name)
        config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"conftest: built the offline model {name} in {time.perf_counter() - start:.0f} s")


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
