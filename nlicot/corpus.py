"""Reading and validating corpus rows (JSONL, CSV, a saved `datasets` folder or a hub dataset name).

Every problem is reported at once, each with the file and line (or the row id) it comes from, as one
:class:`CorpusError`; the CLI prints it without a traceback. Training needs ``thought_process``; prediction
inputs only need premise and hypothesis (label optional).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

MAX_REPORTED = 20
FIELDS = ("id", "premise", "hypothesis", "label", "thought_process", "source")


class CorpusError(ValueError):
    """Bad input data: the message names every offending file:line or row."""


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{n}", CorpusError(f"{path}:{n}: broken JSON line ({e.msg} at column {e.colno})")


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _read_datasets(source: str, split: str) -> Iterator[tuple[str, Any]]:
    """A folder written by ``Dataset.save_to_disk`` or anything ``datasets.load_dataset`` understands.

    ``name#split`` picks a split; otherwise the split of the role (train / validation / test) is used.
    """
    import datasets

    name, _, chosen = source.partition("#")
    chosen = chosen or split
    try:
        saved = ("state.json", "dataset_dict.json")  # what save_to_disk writes
        if any((Path(name) / f).is_file() for f in saved):
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=chosen)
    except Exception as e:  # datasets raises many types; the user needs the source and the reason only
        raise CorpusError(f"{source}: cannot load dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if chosen not in ds:
            raise CorpusError(f"{source}: no split {chosen!r} (has {', '.join(ds)})")
        ds = ds[chosen]
    for i, row in enumerate(ds):
        yield f"{source}[{chosen}] row {i}", row


def _records(source: str, split: str) -> Iterator[tuple[str, Any]]:
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".csv"):
        if not path.is_file():
            raise CorpusError(f"{source}: file not found")
        return _read_csv(path) if path.suffix == ".csv" else _read_jsonl(path)
    return _read_datasets(source, split)


def _label(value: Any) -> int | None:
    """0/1 as int, bool, integral float or digit string (CSV); anything else is invalid."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def load_rows(
    source: str,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    require_thought: bool = True,
    require_label: bool = True,
) -> list[dict[str, Any]]:
    """Read, rename (``columns`` maps our field name to the source's column) and validate every row.

    Returns rows with ``id``, ``premise``, ``hypothesis``, ``label`` (int or None), ``thought_process``
    (str or None), ``source`` and ``where`` (file:line, for later messages).
    """
    rename = {ours: theirs for ours, theirs in (columns or {}).items()}
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}

    def bad(msg: str) -> None:
        problems.append(msg)

    for where, rec in _records(source, split):
        if isinstance(rec, CorpusError):
            bad(str(rec))
            continue
        if not isinstance(rec, Mapping):
            bad(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        get = {f: rec.get(rename.get(f, f)) for f in FIELDS}
        row: dict[str, Any] = {"where": where}
        for field in ("premise", "hypothesis"):
            value = get[field]
            if value is None:
                bad(f"{where}: missing field {rename.get(field, field)!r}")
            elif not isinstance(value, str) or not value.strip():
                bad(f"{where}: field {rename.get(field, field)!r} must be a non-empty string")
            row[field] = value
        label = _label(get["label"])
        if get["label"] in (None, "") and not require_label:
            label = None
        elif label is None:
            bad(f"{where}: field {rename.get('label', 'label')!r} must be 0 or 1, got {get['label']!r}")
        row["label"] = label
        thought = get["thought_process"]
        if require_thought and (not isinstance(thought, str) or not thought.strip()):
            bad(f"{where}: field {rename.get('thought_process', 'thought_process')!r} must be a non-empty string")
        row["thought_process"] = thought if isinstance(thought, str) else None
        row["source"] = str(get["source"] or "initial")
        row_id = get["id"]
        row["id"] = str(row_id) if row_id not in (None, "") else where.rsplit("/", 1)[-1]
        if row["id"] in first_seen:
            bad(f"{where}: duplicate id {row['id']!r} (first at {first_seen[row['id']]})")
        first_seen.setdefault(row["id"], where)
        rows.append(row)
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        more = f" (stopped after the first {MAX_REPORTED})" if len(problems) >= MAX_REPORTED else ""
        raise CorpusError(f"{len(problems)} problem(s) in {source}{more}:\n  " + "\n  ".join(problems))
    if not rows:
        raise CorpusError(f"{source}: no rows")
    return rows


def source_fingerprint(source: str) -> str:
    """What a cache built from ``source`` must be keyed by, so that changed data is never served stale.

    A file or a saved ``datasets`` folder: the bytes of every file in it (re-saving a folder under the same
    name changes the key). A hub name: the dataset's resolved revision (``datasets`` keys its own cache by the
    commit hash, or by the data files for a local folder); if that cannot be resolved (offline, no cache), the
    name itself, which ``data.cache=false`` bypasses.
    """
    name, split = source, ""
    if not Path(source).is_file():  # ``name#split`` (see _read_datasets)
        name, _, split = source.partition("#")
    path = Path(name)
    if path.is_file() or path.is_dir():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        h = hashlib.sha256(split.encode())
        for file in files:
            h.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
    if path.suffix in (".jsonl", ".json", ".csv"):  # a missing file: loading reports it
        return hashlib.sha256(source.encode()).hexdigest()
    try:
        import datasets

        builder = datasets.load_dataset_builder(name)
        return hashlib.sha256(f"{source}@{builder.config_id}@{builder.hash}".encode()).hexdigest()
    except Exception:  # resolution fails exactly where loading will report why; the key then falls back to the name
        return hashlib.sha256(source.encode()).hexdigest()
