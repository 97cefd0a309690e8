"""Offline name → how to build it: the names :func:`nlicot.hub.resolve_model_path` builds instead of downloading.

Why a registry: the CLI's "unknown model name" error, the test session's pre-build (tests/conftest.py) and the
hub's cache all need the same list of names and the cache folder each one builds into.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

from nlicot.offline import random_tiny, tiny_nli


class OfflineModel(NamedTuple):
    """A model that is built locally instead of downloaded."""

    folder: str  #: cache folder name; it carries the recipe's version, so a changed recipe is rebuilt, never reused
    build: Callable[[Path], object]  #: writes model + tokenizer into an empty folder


def offline_models() -> dict[str, OfflineModel]:
    """Every offline name: the random ``tiny`` and the pretrained bases of :data:`nlicot.offline.tiny_nli.RECIPES`
    (a function, not a constant, so a test that changes a recipe sees it)."""
    models = {random_tiny.TINY_NAME: OfflineModel(random_tiny.folder_name(), random_tiny.build_tiny)}
    for name in tiny_nli.RECIPES:
        models[name] = OfflineModel(tiny_nli.folder_name(name), partial(tiny_nli.build, name))
    return models
