"""Robust extraction of ``{"thought_process": …, "predicted_label": …}`` from what a model actually wrote.

Two passes, the strict one first:

1. **Strict.** Every ``{`` in the text is tried as the start of a JSON object (``json`` with ``strict=False``, so raw
   newlines inside strings are accepted). Among the objects that have a label key, the one that *ends last* wins:
   a model that echoes an example and then answers is scored on its answer.
2. **Lenient.** When no valid object has a label key (trailing commas, single quotes, unescaped quotes inside the
   thought, an object cut off by ``max_new_tokens``), the *quoted* keys are located directly in the text: the last
   label key wins, and a string value is taken to run up to the next ``"key":`` or the closing brace, so stray
   quotes inside the thought do not end it early.

A label is never invented: only a value written after a label key and recognised as one of the spellings in
:data:`_LABEL_WORDS` (or 0/1 as number, string or float, or true/false) becomes a label; anything else gives
``None``, which the metrics count as a parse failure.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

#: Key spellings (after lower-casing and folding spaces/hyphens to ``_``) that hold the label or the thought.
#: In priority order, for an object that has more than one.
_LABEL_KEYS = ("predicted_label", "predictedlabel", "label", "prediction")
_THOUGHT_KEYS = ("thought_process", "thoughtprocess", "thought", "thoughts", "reasoning")

#: Written labels, compared after lower-casing and folding ``_``/``-``/runs of spaces to one space.
_LABEL_WORDS = {
    "1": 1, "true": 1, "entailment": 1, "entailed": 1, "entails": 1,
    "0": 0, "false": 0, "contradiction": 0, "neutral": 0,
    "no entailment": 0, "not entailment": 0, "non entailment": 0, "not entailed": 0,
}  # fmt: skip

_DECODER = json.JSONDecoder(strict=False)
# A quoted key (not an escaped quote inside a JSON string), then ':' or '='; group 2 is the key itself.
_KEY = r"(?<!\\)([\"'])\s*({names})\s*\1\s*[:=]\s*"
_LABEL_KEY_RE = re.compile(_KEY.format(names=r"predicted[ _-]?label|label|prediction"), re.IGNORECASE)
_THOUGHT_KEY_RE = re.compile(_KEY.format(names=r"thought[ _-]?process|thoughts?|reasoning"), re.IGNORECASE)
# What may follow the closing quote of a string value: another quoted key, or the end of the object.
_AFTER_VALUE_RE = re.compile(r"\s*(?:,?\s*[\"'][^\"'\n]{1,40}[\"']\s*:|,?\s*})")
_BARE_VALUE_RE = re.compile(r"[^,}\n]*")
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


class Extraction(NamedTuple):
    """What could be recovered; ``label is None`` means a parse failure."""

    thought: str | None
    label: int | None

    @property
    def ok(self) -> bool:
        return self.label is not None


def extract_prediction(text: str) -> Extraction:
    """The thought (stripped) and the label (0, 1 or None) of the model's last answer in ``text``."""
    strict = _strict(text)
    if strict is not None:
        return strict
    return _lenient(text)


def label_from_value(value: Any) -> int | None:
    """0/1 from a JSON value or a written label; ``None`` when it is not unambiguously one of the two."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value) if value in (0, 1) else None
    if not isinstance(value, str):
        return None
    word = re.sub(r"[\s_-]+", " ", value.strip().strip("\"'.").lower()).strip()
    if word in _LABEL_WORDS:
        return _LABEL_WORDS[word]
    try:
        number = float(word)
    except ValueError:
        return None
    return int(number) if number in (0, 1) else None


def _norm_key(key: str) -> str:
    return re.sub(r"[\s-]+", "_", key.strip().lower())


def json_objects(text: str) -> list[tuple[int, dict]]:
    """Every JSON object that starts at some ``{`` of ``text`` (nested ones too), with the offset where it ends.

    Raw newlines inside strings are accepted. data_gen picks its stage's answer among these.
    """
    found = []
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append((end, obj))
    return found


def _strict(text: str) -> Extraction | None:
    """The label-bearing valid JSON object that ends last, or None if there is none."""
    best: tuple[int, dict] | None = None
    for end, obj in json_objects(text):
        if any(_norm_key(k) in _LABEL_KEYS for k in obj):
            if best is None or end > best[0]:
                best = (end, obj)
    if best is None:
        return None
    fields = {_norm_key(k): v for k, v in best[1].items()}
    label = next((label_from_value(fields[k]) for k in _LABEL_KEYS if k in fields), None)
    thought = next((_thought_from_value(fields[k]) for k in _THOUGHT_KEYS if k in fields), None)
    return Extraction(thought, label)


def _thought_from_value(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # steps written as a list
        return " ".join(v.strip() for v in value)
    return None


def _lenient(text: str) -> Extraction:
    """Key-by-key recovery for text that is not valid JSON."""
    label_keys = list(_LABEL_KEY_RE.finditer(text))
    thought_keys = list(_THOUGHT_KEY_RE.finditer(text))
    label = None
    anchor = len(text)
    if label_keys:
        last = label_keys[-1]
        anchor = last.start()
        label = label_from_value(_label_value_at(text, last.end()))
    thought = None
    if thought_keys:  # the thought key nearest the chosen label key belongs to the same answer
        key = min(thought_keys, key=lambda m: abs(m.start() - anchor))
        thought = _thought_value_at(text, key.end())
    return Extraction(thought, label)


def _label_value_at(text: str, pos: int) -> str:
    """A label value: up to the next quote if quoted (labels hold no quotes), else up to ``,``/``}``/newline."""
    quote = text[pos : pos + 1]
    if quote in ("'", '"'):
        end = text.find(quote, pos + 1)
        return text[pos + 1 : end if end >= 0 else len(text)]
    return _BARE_VALUE_RE.match(text, pos).group(0)


def _thought_value_at(text: str, pos: int) -> str | None:
    """A quoted thought starting at ``pos``, unescaped and stripped; ``None`` if the value is not a string.

    It ends at the first unescaped matching quote that is followed by another key or the end of the object, so
    quotes the model forgot to escape stay inside it. Without such a quote (the text was cut off) it runs to the
    end of the text, minus a dangling closing quote.
    """
    quote = text[pos : pos + 1]
    if quote not in ("'", '"'):
        return None
    body = None
    for i in range(pos + 1, len(text)):
        if text[i] == quote and not _escaped(text, i) and _AFTER_VALUE_RE.match(text, i + 1):
            body = text[pos + 1 : i]
            break
    if body is None:
        body = text[pos + 1 :].rstrip()
        if body.endswith(quote) and not _escaped(body, len(body) - 1):
            body = body[:-1]
    return _unescape(body).strip()


def _escaped(text: str, i: int) -> bool:
    """Whether ``text[i]`` is preceded by an odd number of backslashes."""
    n = 0
    while i - n - 1 >= 0 and text[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _unescape(body: str) -> str:
    """JSON/Python string escapes decoded (surrogate pairs joined); an unknown escape is kept as written."""

    def one(m: re.Match) -> str:
        code = m.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        return _SIMPLE_ESCAPES.get(code, code if code in "\"'\\/" else m.group(0))

    return _ESCAPE_RE.sub(one, body).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
