"""All-or-nothing file writes: a temporary file in the same folder, fsync'd, then renamed over the target.

Every file nlicot and data_gen leave behind (checkpoints, predictions, metrics, figures, corpus splits, ledgers)
goes through here, so a crash or ``kill -9`` mid-write leaves either the old file or the new one, never half;
folders (the tiny model, data caches, adapter and export folders) go through :func:`atomic_dir`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 would survive the rename. 0666 lets the process umask decide, as for any new file.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` for UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextmanager
def atomic_dir(dest: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``dest``; when the block ends without error, rename it to ``dest``.

    A crash inside the block leaves no ``dest`` (and no temp folder once the block unwinds). If ``dest``
    appeared meanwhile (another process built the same content), that one is kept; ``replace=True`` swaps the
    new folder in instead (the old one exists until the new one is complete).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(dest, "tmp")
    try:
        yield tmp
        if replace and dest.exists():
            old = _new_dir(dest, "old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _new_dir(dest: Path, kind: str) -> Path:
    """An empty hidden folder beside ``dest``; not mkdtemp, whose 0700 would survive the rename (umask decides)."""
    path = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.{kind}"
    path.mkdir(mode=0o777)
    return path
