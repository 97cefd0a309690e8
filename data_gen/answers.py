"""What counts as a usable reply from a stage's model, and what is kept of it.

Real models do not follow the requested format to the letter: they write ``Step 1.`` or ``1.`` instead of
``step 1:``, put prose or code fences around the JSON, spell the label as ``"Entailment"`` or ``"0 (no
entailment)"``, name keys ``reasoning`` / ``error_analysis`` / ``improved_thought_process``, and put the verdict at
the end of step 3 ("… the hypothesis cannot be inferred from the premise"). Re-prompting for any of that pays two
or three times for an answer that was fine, so a reply is **unusable** (:class:`InvalidAnswer`, which re-prompts)
only when

* no JSON object can be read from it, even leniently (the extraction of :mod:`nlicot.parsing`: prose around it,
  fences, trailing commas, single quotes, unescaped quotes inside the thought);
* it has no thought (under any alias of the stage's thought key);
* it has no label that normalises to 0/1 (:func:`label_of`); or, in ``reflect`` / ``improve``, the label is not the
  gold label the model was given.

Everything else is *normalised* (:func:`normalise_thought`: ``step N:`` markers, single spaces) and *measured*:
:func:`quality` gives the flags ``steps`` (how many numbered steps), ``verdict_consistent`` (whether the verdict the
thought states agrees with its label; ``None`` when it states none) and ``words``. ``build`` decides with them what
enters the corpus, so the strictness is a build setting, not a paid re-prompt.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from data_gen.prompts import SCORE_KEYS, flat
from data_gen.row_workflow import InvalidAnswer
from nlicot.parsing import extract_prediction, json_objects, label_from_value
from nlicot.thoughts import (  # noqa: F401 (verdict_of, stated_verdict, split_steps: data_gen's API, tested there)
    conclusion_of,
    normalise_thought,
    read_verdict,
    split_steps,
    starts_with_step_marker,
    stated_verdict,
    verdict_of,
)

Fields = dict[str, Any]

# --- key aliases: normalised key names (lower case, words joined by "_"), in priority order ---

THOUGHT_KEYS = (
    "thought_process", "thought", "thoughts", "reasoning", "chain_of_thought", "cot", "rationale", "explanation",
    "steps", "reasoning_steps", "thinking", "justification",
)
#: reflect / improve: the corrected thought wins over an echoed flawed one under a plain key.
REVISED_THOUGHT_KEYS = (
    "improved_thought_process", "corrected_thought_process", "revised_thought_process", "new_thought_process",
    "fixed_thought_process", "correct_thought_process", "improved_thought", "corrected_thought", "revised_thought",
    "new_thought", "improved_reasoning", "corrected_reasoning", "revised_reasoning", "corrected_chain_of_thought",
    "improved_chain_of_thought", *THOUGHT_KEYS,
)
#: generate has no flaw to name, so an "analysis" there is the thought (in reflect it is the flaw).
GENERATION_THOUGHT_KEYS = (*THOUGHT_KEYS, "analysis")
LABEL_KEYS = (
    "predicted_label", "label", "prediction", "answer", "predicted", "final_label", "final_answer", "verdict",
    "classification", "nli_label", "correct_label", "corrected_label", "output", "result",
)
FLAW_KEYS = (
    "flaw_analysis", "error_analysis", "analysis", "what_went_wrong", "flaw", "flaws", "error", "errors", "mistake",
    "mistakes", "reflection", "issue", "problem", "diagnosis",
)
SCORE_ALIASES = {
    "coherence": ("coherence", "coherence_score", "coherent", "logical_coherence", "logic"),
    "correctness": ("correctness", "correctness_score", "correct", "accuracy", "factual_correctness", "validity"),
    "brevity": ("brevity", "brevity_score", "conciseness", "concision", "concise", "conciseness_score"),
}
_SCORE_WORDS = {"coherence": re.compile(r"^coheren"), "correctness": re.compile(r"^correct"),
                "brevity": re.compile(r"^(?:brev|concis)")}  # "Coherence (1-5)", "brevity_rating"
CRITIQUE_KEYS = (
    "critique", "feedback", "comment", "comments", "weakest_point", "weakness", "weaknesses", "explanation",
    "justification", "reason", "rationale", "notes", "summary",
)
#: When no alias matches: a key containing one of these words (flawed/original ones never count as the fix).
_THOUGHT_WORDS = re.compile(r"thought|reasoning|chain|steps")
_NOT_REVISED = re.compile(r"(?:^|_)(?:original|flawed|previous|old|initial|wrong)(?:_|$)")
_LABEL_WORDS = re.compile(r"label")
_FLAW_WORDS = re.compile(r"flaw|error|mistake|wrong|analysis")

# --- labels ---

_EXTRA_LABEL_WORDS = {"yes": 1, "no": 0}  # "entails": "yes"; kept out of nlicot's own table (it scores models)
_DIGIT = re.compile(r"(?<![\w.])([01])(?![\w.])")


def label_of(value: Any) -> int | None:
    """0/1 from what a model put under a label key; ``None`` unless it is unambiguous.

    Accepts everything :func:`nlicot.parsing.label_from_value` does (``1``, ``"1"``, ``1.0``, ``true``,
    ``"entailment"``, ``"Not Entailment"``, ``"neutral"`` …), plus ``yes``/``no`` and mixed forms such as
    ``"Entailment (1)"`` or ``"0 - no entailment"`` when the digit and the words agree.
    """
    label = label_from_value(value)
    if label is not None or not isinstance(value, str):
        return label
    text = value.strip().lower().strip(".!\"'")
    if text in _EXTRA_LABEL_WORDS:
        return _EXTRA_LABEL_WORDS[text]
    digits = {int(d) for d in _DIGIT.findall(text)}
    words = verdict_of(_DIGIT.sub(" ", text), anywhere=True)
    said = digits | ({words} if words is not None else set())
    return said.pop() if len(said) == 1 else None


def quality(thought: str, label: int) -> dict[str, Any]:
    """The flags ``build`` filters on: step count, whether the stated verdict agrees with ``label`` (``None``: no
    verdict stated, or ``verdict_uncertain``: one whose cues disagree), length."""
    _, steps = split_steps(thought)
    stated, verdict = read_verdict(conclusion_of(thought))
    return {
        "steps": len(steps),
        "verdict_consistent": None if verdict is None else verdict == label,
        "verdict_uncertain": stated and verdict is None,
        "words": len(thought.split()),
    }


# --- reading a reply ---


def _norm_key(key: str) -> str:
    """``"Predicted Label"``, ``"predictedLabel"``, ``"predicted-label"`` -> ``"predicted_label"``."""
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(key).strip())
    return re.sub(r"[\s\-]+", "_", key.lower())


def _view(obj: dict) -> Fields:
    """Normalised keys, with one level of nested objects lifted (``{"scores": {"coherence": 4}, …}``)."""
    fields = {_norm_key(k): v for k, v in obj.items()}
    for key, value in list(fields.items()):
        if isinstance(value, dict) and key not in REVISED_THOUGHT_KEYS:
            for k, v in value.items():
                fields.setdefault(_norm_key(k), v)
    return fields


def _pick(
    fields: Fields, aliases: Iterable[str], words: re.Pattern | None = None, exclude: re.Pattern | None = None
) -> Any:
    """The value under the first alias present, else under the first key containing one of ``words``."""
    for key in aliases:
        if key in fields and fields[key] not in (None, ""):
            return fields[key]
    if words is not None:
        for key, value in fields.items():
            if words.search(key) and not (exclude and exclude.search(key)) and value not in (None, ""):
                return value
    return None


def _repaired(text: str) -> list[dict]:
    """Objects readable after the usual slips: trailing commas, Python literals (single quotes, True/None)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return []
    body = re.sub(r",\s*([}\]])", r"\1", text[start : end + 1])
    for attempt in (lambda: json.loads(body, strict=False), lambda: ast.literal_eval(body)):
        try:
            obj = attempt()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(obj, dict):
            return [obj]
    return []


Group = tuple[tuple[str, ...], re.Pattern | None]  # a field's aliases and the words of its fallback keys


def reply_fields(text: str, groups: tuple[Group, ...]) -> Fields:
    """The stage's answer object, as normalised fields.

    Among every object in the reply (prose and fences around it, nested ones, an echoed example before the answer),
    the one holding the most of the stage's key ``groups`` wins, and of those the one that ends last. Without any
    valid object, the repairs of :func:`_repaired`, then the key-by-key recovery of :mod:`nlicot.parsing`.
    """
    objects = json_objects(text) or [(0, obj) for obj in _repaired(text)]
    best: tuple[int, int, Fields] | None = None
    for end, obj in objects:
        fields = _view(obj)
        score = sum(_pick(fields, aliases, words) is not None for aliases, words in groups)
        if score and (best is None or (score, end) > best[:2]):
            best = (score, end, fields)
    if best is not None:
        return best[2]
    lenient = extract_prediction(text)
    if lenient.thought is None and lenient.label is None:
        raise InvalidAnswer("it contains no JSON object with the keys asked for")
    return {"thought_process": lenient.thought, "predicted_label": lenient.label}


def _thought_text(value: Any) -> str | None:
    """A thought given as a string, a list of steps or a ``{"step_1": …}`` mapping, as one string."""
    if isinstance(value, dict):
        value = [v for v in value.values() if isinstance(v, str)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        numbered = all(starts_with_step_marker(v.strip()) for v in value)
        return " ".join(v.strip() if numbered else f"step {i}: {v.strip()}" for i, v in enumerate(value, start=1))
    return value if isinstance(value, str) and value.strip() else None


def _thought(fields: Fields, aliases: tuple[str, ...], revised: bool = False) -> str:
    thought = _thought_text(_pick(fields, aliases, _THOUGHT_WORDS, _NOT_REVISED if revised else None))
    if thought is None:
        raise InvalidAnswer('it has no "thought_process" (a non-empty string with the three steps)')
    return normalise_thought(thought)


def _label(fields: Fields) -> int:
    value = _pick(fields, LABEL_KEYS, _LABEL_WORDS, _NOT_REVISED)  # an "original_label" is never the answer
    label = label_of(value)
    if value is None:
        raise InvalidAnswer('it has no "predicted_label" (1 for entailment, 0 for no entailment)')
    if label is None:
        got = json.dumps(value, default=str)
        raise InvalidAnswer(f'"predicted_label" must be 1 (entailment) or 0 (no entailment), got {got}')
    return label


def _for_gold(gold: int, label: int) -> None:
    if label != gold:
        raise InvalidAnswer(f'"predicted_label" must be the correct label {gold}, got {label}')


_ANSWER_GROUPS = ((GENERATION_THOUGHT_KEYS, _THOUGHT_WORDS), (LABEL_KEYS, _LABEL_WORDS))
_REVISION_GROUPS = ((REVISED_THOUGHT_KEYS, _THOUGHT_WORDS), (LABEL_KEYS, _LABEL_WORDS), (FLAW_KEYS, _FLAW_WORDS))


def parse_generation(text: str) -> dict[str, Any]:
    """generate: the normalised thought, its label and its quality flags."""
    fields = reply_fields(text, _ANSWER_GROUPS)
    thought, label = _thought(fields, GENERATION_THOUGHT_KEYS), _label(fields)
    return {"thought_process": thought, "predicted_label": label, "quality": quality(thought, label)}


def parse_reflection(gold: int) -> Callable[[str], dict[str, Any]]:
    """reflect: the flaw (``None`` if not named: the corpus does not use it) and a corrected thought for ``gold``."""

    def parse(text: str) -> dict[str, Any]:
        fields = reply_fields(text, _REVISION_GROUPS)
        thought, label = _thought(fields, REVISED_THOUGHT_KEYS, revised=True), _label(fields)
        _for_gold(gold, label)
        flaw = _pick(fields, FLAW_KEYS, _FLAW_WORDS)
        return {"flaw_analysis": flat(flaw) if isinstance(flaw, str) else None, "thought_process": thought,
                "quality": quality(thought, label)}

    return parse


def parse_improvement(gold: int) -> Callable[[str], str]:
    """improve: the rewritten thought, which must reach ``gold``."""

    def parse(text: str) -> str:
        fields = reply_fields(text, _REVISION_GROUPS)
        thought, label = _thought(fields, REVISED_THOUGHT_KEYS, revised=True), _label(fields)
        _for_gold(gold, label)
        return thought

    return parse


def _score(value: Any) -> float | None:
    """A 1-5 grade from ``4``, ``"4"``, ``4.5``, ``"4/5"`` or ``"4 out of 5"``; anything else is ``None``."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*5)?\s*", value)
        value = float(m.group(1)) if m else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
        return None
    return int(value) if float(value).is_integer() else float(value)


def parse_scores(text: str) -> dict[str, Any]:
    """judge: coherence, correctness and brevity from 1 to 5, and the critique (empty if none was given)."""
    fields = reply_fields(text, (*((SCORE_ALIASES[k], _SCORE_WORDS[k]) for k in SCORE_KEYS), (CRITIQUE_KEYS, None)))
    scores: dict[str, Any] = {}
    for key in SCORE_KEYS:
        value = _pick(fields, SCORE_ALIASES[key], _SCORE_WORDS[key])
        score = _score(value)
        if score is None:
            raise InvalidAnswer(f'"{key}" must be a number from 1 to 5, got {json.dumps(value, default=str)}')
        scores[key] = score
    critique = _pick(fields, CRITIQUE_KEYS)
    scores["critique"] = flat(critique) if isinstance(critique, str) else ""
    return scores


# --- what build keeps ---


@dataclass(frozen=True)
class QualityRules:
    """Which thoughts ``build`` lets into the corpus (the defaults are the ``standard`` preset).

    A thought whose stated verdict contradicts its label is dropped (training on it would teach the model to argue
    one way and answer the other) unless ``verdict_must_agree`` is off (``lenient``): the verdict reader can be
    wrong, and build reports per label what each rule removed, so a skew it causes can be seen.
    """

    verdict_must_agree: bool = True  # drop a thought whose stated verdict is the other label
    steps: int | None = 3  # exact number of numbered steps; null: any
    verdict_required: bool = False  # drop a thought whose last step states no verdict
    min_words: int = 10
    max_words: int | None = 150  # null: no limit

    def failed_rule(self, flags: dict[str, Any]) -> str | None:
        """The first rule the flags break, by the name ``build`` counts it under; ``None`` if the thought stays."""
        if self.verdict_must_agree and flags["verdict_consistent"] is False:
            return "verdict_contradicts_label"
        if self.verdict_required and flags["verdict_consistent"] is None:
            return "no_verdict"
        if self.steps is not None and flags["steps"] != self.steps:
            return "wrong_step_count"
        if flags["words"] < self.min_words:
            return "too_few_words"
        if self.max_words is not None and flags["words"] > self.max_words:
            return "too_many_words"
        return None


QUALITY_RULES = ("verdict_contradicts_label", "no_verdict", "wrong_step_count", "too_few_words", "too_many_words")
QUALITY_PRESETS = {
    "lenient": QualityRules(verdict_must_agree=False, steps=None, min_words=1, max_words=None),
    "standard": QualityRules(),
    "strict": QualityRules(steps=3, verdict_required=True, min_words=20, max_words=100),
}
