"""Model and tokenizer resolution: a hub id, a local folder or an offline name → a folder ``from_pretrained`` reads.

Why one room: the model, the data module, data_gen's length filter and the benchmarks must agree on what a
name means. Hub ids and folders pass through unchanged; the offline names (:mod:`nlicot.offline.registry`, built
without any network, e.g. ``tiny``) and GGUF files (:mod:`nlicot.gguf`, dequantised once, keyed by the file's
hash) are built once into ``$NLICOT_CACHE`` and then read like any saved model.
"""

from __future__ import annotations

import os
from pathlib import Path

from nlicot import gguf
from nlicot.atomic import atomic_dir
from nlicot.offline.registry import offline_models
from nlicot.offline.v3_tokenizer import load_v3_tokenizer


def cache_root() -> Path:
    """Where built artefacts live: ``$NLICOT_CACHE`` or ``~/.cache/nlicot``."""
    return Path(os.environ.get("NLICOT_CACHE", Path.home() / ".cache" / "nlicot"))


class UnknownModelError(ValueError):
    """A ``tiny-*`` name that no recipe builds; the CLI prints it as one ``error:`` line."""


def is_built(name: str) -> bool:
    """Whether the offline model ``name`` is already in the cache (a folder is only there once complete)."""
    return (cache_root() / offline_models()[name].folder / "config.json").is_file()


def check_offline_name(name: str) -> None:
    """A ``tiny-*`` name that is neither an offline model nor a path is a typo, not a hub id: UnknownModelError."""
    models = offline_models()
    if name not in models and name.startswith("tiny-") and not Path(name).exists():
        raise UnknownModelError(f"unknown model name {name!r}: choose {', '.join(models)}, a hub id or a folder")


def resolve_model_path(name_or_path: str) -> str:
    """Map an offline name or a GGUF file to its cached folder (building it on first use); pass hub ids and
    folders through."""
    if gguf.is_gguf(name_or_path):
        file = gguf.gguf_file(name_or_path)
        dest = cache_root() / gguf.folder_name(file)
        if not (dest / "config.json").is_file():
            with atomic_dir(dest) as tmp:
                gguf.convert(file, tmp)
        return str(dest)
    check_offline_name(name_or_path)
    offline = offline_models().get(name_or_path)
    if offline is None:
        return name_or_path
    dest = cache_root() / offline.folder
    if not is_built(name_or_path):
        import torch

        # The builders seed torch themselves; without the fork, a run that builds the base (the first from a clean
        # cache) would initialise its LoRA from another random state than every later run, and train differently.
        with atomic_dir(dest) as tmp, torch.random.fork_rng(devices=[]):
            offline.build(tmp)  # another process building the same folder at once: its copy is kept
    return str(dest)


def load_tokenizer(name_or_path: str):
    """The tokenizer for a model name, hub id or folder, with the pad token set."""
    return load_v3_tokenizer(resolve_model_path(name_or_path))
