"""Reading and validating corpus rows (JSONL, CSV, a saved `datasets` folder or a hub dataset name).

Every problem is reported at once, each with the file and line (or the row id) it comes from, as one
:class:`CorpusError`; the CLI prints it without a traceback. Training needs ``thought_process`` except on
label-only rows (``label_only=True``: rows GRPO learns from by their label alone); prediction inputs only need
premise and hypothesis (label optional).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

MAX_REPORTED = 20
#: The ``source`` of a row that has a gold label but no thought (nothing was paid for it).
LABEL_ONLY = "label_only"
FIELDS = ("id", "premise", "hypothesis", "label", "thought_process", "source")


class CorpusError(ValueError):
    """Bad input data: the message names every offending file:line or row."""


def _text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM dropped); the first byte that is not UTF-8 is named by line/column."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read ({e.strerror})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column = len(data[line_start : e.start].decode("utf-8")) + 1  # characters, as an editor counts them
        raise CorpusError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {column})") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for n, line in enumerate(io.StringIO(_text(path)), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{n}", CorpusError(f"{path}:{n}: broken JSON line ({e.msg} at column {e.colno})")


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows as dicts named by the header, each at the line it *starts* on.

    A quote that opens a field and is never closed makes the CSV reader swallow the following lines, so the error
    it raises (or the odd row it returns) surfaces lines later; it is reported at the line where the quote opened.
    """
    text = _text(path)
    lines = re.split(r"\r\n|\r|\n", text)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    first, header = 1, None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "end of data" in str(e):
                raise CorpusError(f"{path}:{first}: unbalanced quote: the quoted field opened on this line runs to "
                                  "the end of the file") from None
            if reader.line_num > first:
                raise CorpusError(f"{path}:{first}: unbalanced quote: the quoted field opened on this line runs on to "
                                  f"line {reader.line_num} ({e})") from None
            raise CorpusError(f"{path}:{first}: broken CSV line ({e})") from None
        start, end, first = first, reader.line_num, reader.line_num + 1
        where = f"{path}:{start}"
        if not fields:
            continue
        if header is None:
            header = fields
            continue
        inside = lines[start : end - 1]  # lines swallowed whole by a quoted field
        if end > start and (len(fields) != len(header) or any(x.count(",") >= len(header) - 1 for x in inside)):
            raise CorpusError(f"{where}: unbalanced quote: the quoted field opened on this line runs on to line {end}")
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
            yield where, CorpusError(f"{where}: expected {len(header)} fields (as in the header), got {len(fields)}")
            continue
        yield where, dict(zip(header, fields + [None] * (len(header) - len(fields))))


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
    content_ids: bool = False,
    label_only: bool = False,
) -> list[dict[str, Any]]:
    """Read, rename (``columns`` maps our field name to the source's column) and validate every row.

    Returns rows with ``id``, ``premise``, ``hypothesis``, ``label`` (int or None), ``thought_process``
    (str or None), ``source`` and ``where`` (file:line, for later messages).

    A row without an id gets ``file:line`` by default: for training and prediction the id only has to name the row
    in messages and prediction outputs, and a prediction input may hold the same pair twice on purpose.
    ``content_ids`` (data_gen, where an id decides what is paid for) gives it :func:`pair_id` instead, which
    survives renaming the file or inserting rows, and keeps each (premise, hypothesis) pair once: a repeat with the
    same label and thought is dropped and its place listed in the kept row's ``also_at``; one with a different
    label or thought is a problem.

    ``label_only`` (training): a row whose ``thought_process`` is absent, null or empty is a label-only row
    (``thought_process`` None, ``source`` ``label_only``) instead of a problem, as long as its ``source`` is
    absent or ``label_only``: a row that claims a paid thought (``initial`` / ``reflected``) and lacks it is still
    a broken corpus, and a ``label_only`` row that carries a thought is a contradiction.
    """
    rename = {ours: theirs for ours, theirs in (columns or {}).items()}
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    pairs: dict[str, dict[str, Any]] = {}

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
        thought, origin = get["thought_process"], get["source"]
        thought_key = rename.get("thought_process", "thought_process")
        absent = thought is None or thought == ""
        if label_only and absent and origin in (None, "", LABEL_ONLY):
            origin = LABEL_ONLY
        elif label_only and absent:
            bad(f"{where}: field {thought_key!r} is missing but source is {origin!r} (a row without a thought is "
                f"label-only: its source must be {LABEL_ONLY!r} or absent)")
        elif label_only and origin == LABEL_ONLY:
            bad(f"{where}: source is {LABEL_ONLY!r} but the row has a {thought_key!r}")
        elif (require_thought or label_only) and (not isinstance(thought, str) or not thought.strip()):
            bad(f"{where}: field {thought_key!r} must be a non-empty string")
        row["thought_process"] = thought if isinstance(thought, str) and thought else None
        row["source"] = str(origin or "initial")
        row_id = get["id"]
        valid_pair = all(isinstance(row[f], str) and row[f].strip() for f in ("premise", "hypothesis"))
        if content_ids and valid_pair:
            key = pair_id(row["premise"], row["hypothesis"])
            kept = pairs.setdefault(key, row)
            if kept is not row:
                if (kept["label"], kept["thought_process"]) == (row["label"], row["thought_process"]):
                    kept.setdefault("also_at", []).append(where)
                else:
                    bad(f"{where}: same premise and hypothesis as {kept['where']} but a different label or thought")
                continue
        if row_id not in (None, ""):
            row["id"] = str(row_id)
        elif content_ids and valid_pair:
            row["id"] = pair_id(row["premise"], row["hypothesis"])
        else:
            row["id"] = where.rsplit("/", 1)[-1]
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


def pair_id(premise: str, hypothesis: str) -> str:
    """``p-`` + 16 hex digits of SHA-256 over the pair, whitespace runs folded to one space (case is kept).

    The id data_gen gives a row without an ``id`` column: it depends on nothing but the pair, so renaming the input
    or inserting a row leaves every other row's id (and its paid result) in place.
    """
    text = " ".join(premise.split()) + "\n" + " ".join(hypothesis.split())
    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:16]


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
