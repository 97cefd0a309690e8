"""extract_prediction: what real models write, plus properties over generated answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nlicot.parsing import Extraction, extract_prediction, label_from_value
from nlicot.prompt import answer_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(answer_text("step 1: a. step 2: b. step 3: c.", 1), ("step 1: a. step 2: b. step 3: c.", 1),
                     id="training-format"),
        pytest.param('Here is my answer:\n```json\n{"thought_process": "t", "predicted_label": 0}\n```\nHope it helps.',
                     ("t", 0), id="prose-and-fence"),
        pytest.param('{"thought_process": "t", "predicted_label": 1,}', ("t", 1), id="trailing-comma"),
        pytest.param("{'thought_process': 'it's raining', 'predicted_label': 1}", ("it's raining", 1),
                     id="single-quotes-with-apostrophe"),
        pytest.param('{"thought_process": "he said "no" twice", "predicted_label": 0}', ('he said "no" twice', 0),
                     id="unescaped-quotes"),
        pytest.param('{"thought_process": "step 1: a\nstep 2: b", "predicted_label": 1}', ("step 1: a\nstep 2: b", 1),
                     id="raw-newline"),
        pytest.param('{"thought_process": "a "b"\nc", "predicted_label": 1,}', ('a "b"\nc', 1),
                     id="quotes-newline-and-comma"),
        pytest.param('{"thought_process": "step 1: a", "predicted_label": 1', ("step 1: a", 1),
                     id="truncated-after-label"),
        pytest.param('{"thought_process": "step 1: a, step 2', ("step 1: a, step 2", None), id="truncated-in-thought"),
        pytest.param(answer_text('uses {"x"} and C:\\', 1)[:-1], ('uses {"x"} and C:\\', 1),
                     id="truncated-escapes-kept"),
        pytest.param('{"thought_process": "t", "predicted_label": ', ("t", None), id="truncated-before-value"),
        pytest.param('{"thought_process": "t", "predicted_label": "entail', ("t", None), id="truncated-label-word"),
        pytest.param('{"thought_process": "t", "predicted_label": "1"}', ("t", 1), id="string-one"),
        pytest.param('{"thought_process": "t", "predicted_label": "0"}', ("t", 0), id="string-zero"),
        pytest.param('{"thought_process": "t", "predicted_label": "Entailment"}', ("t", 1), id="entailment"),
        pytest.param('{"thought_process": "t", "predicted_label": "no entailment"}', ("t", 0), id="no-entailment"),
        pytest.param('{"thought_process": "t", "predicted_label": "not_entailment"}', ("t", 0), id="not-entailment"),
        pytest.param('{"thought_process": "t", "predicted_label": "contradiction"}', ("t", 0), id="contradiction"),
        pytest.param('{"thought_process": "t", "predicted_label": "neutral"}', ("t", 0), id="neutral"),
        pytest.param('{"thought_process": "t", "predicted_label": entailment}', ("t", 1), id="bare-word"),
        pytest.param('{"thought_process": "t", "label": 1}', ("t", 1), id="label-key"),
        pytest.param('{"thought_process": "t", "predicted_label": 1.0}', ("t", 1), id="float-label"),
        pytest.param('{"thought_process": "t", "predicted_label": 0.0,}', ("t", 0), id="float-label-lenient"),
        pytest.param('{"PREDICTED_LABEL": 0, "Thought_Process": "t"}', ("t", 0), id="case-and-order"),
        pytest.param("{'Label': 'Not Entailment', 'thought_process': 'x'}", ("x", 0), id="case-order-lenient"),
        pytest.param('{"thought_process": "a", "predicted_label": 0}\n{"thought_process": "b", "predicted_label": 1}',
                     ("b", 1), id="last-object-wins"),
        pytest.param('{"predicted_label": 1, "thought_process": "x"} and then {"note": "no label"}', ("x", 1),
                     id="label-less-object-ignored"),
        pytest.param('{"answer": {"thought_process": "t", "predicted_label": 1}}', ("t", 1), id="nested"),
        pytest.param('{"thought_process": ["step 1: a", "step 2: b"], "predicted_label": 1}',
                     ("step 1: a step 2: b", 1),
                     id="thought-as-list"),
        pytest.param('{"thought_process": "t", "predicted_label": 2}', ("t", None), id="out-of-range"),
        pytest.param('{"thought_process": "t", "predicted_label": 0.5}', ("t", None), id="fractional"),
        pytest.param('{"thought_process": "t", "predicted_label": "maybe"}', ("t", None), id="unknown-word"),
        pytest.param('{"thought_process": "t", "predicted_label": null}', ("t", None), id="null"),
        pytest.param("The hypothesis is entailed, so the label is 1.", (None, None), id="prose-only"),
        pytest.param('{"thought_process": "t", "confidence": 0.9}', ("t", None), id="no-label-key"),
        pytest.param("", (None, None), id="empty"),
    ],
)  # fmt: skip
def test_examples(text: str, expected: tuple[str | None, int | None]) -> None:
    assert extract_prediction(text) == Extraction(*expected)


def test_ok_flags_parse_failures() -> None:
    assert extract_prediction(answer_text("t", 0)).ok
    assert not extract_prediction('{"thought_process": "t"}').ok


@pytest.mark.parametrize(
    ("value", "label"),
    [(1, 1), (0, 0), (True, 1), (False, 0), (1.0, 1), (" 1 ", 1), ("1.0", 1), ("NOT-ENTAILMENT", 0),
     ("Entailment.", 1), (2, None), (-1, None), ("10", None), ("", None), (None, None), ([1], None)],
)  # fmt: skip
def test_label_from_value(value: object, label: int | None) -> None:
    assert label_from_value(value) == label


# --- properties -------------------------------------------------------------------------------------------------

LABEL_KEYS = ["predicted_label", "label", "Predicted_Label", "LABEL", "predictedLabel"]
THOUGHT_KEYS = ["thought_process", "Thought_Process", "THOUGHT_PROCESS", "thought"]
# Prose a model might wrap its answer in: no braces or quotes (those would be JSON of their own).
prose = st.text(alphabet=st.characters(blacklist_characters='{}"\'\\', blacklist_categories=("Cs",)), max_size=60)
labels = st.sampled_from([0, 1])
label_values = st.sampled_from([(0, 0), (1, 1), ("0", 0), ("1", 1), (1.0, 1), (0.0, 0), ("entailment", 1),
                                ("no entailment", 0), ("not entailment", 0), ("contradiction", 0),
                                ("neutral", 0)])  # fmt: skip


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, str, int]:
    """(text, thought, label): a json.dumps'd answer with any key spelling/order, wrapped in prose and fences."""
    thought = draw(st.text(max_size=200))
    value, label = draw(label_values)
    items = [(draw(st.sampled_from(THOUGHT_KEYS)), thought), (draw(st.sampled_from(LABEL_KEYS)), value)]
    if draw(st.booleans()):
        items.reverse()
    body = json.dumps(dict(items), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    if draw(st.booleans()):
        body = f"```json\n{body}\n```"
    return draw(prose) + body + draw(prose), thought, label


@settings(max_examples=300, deadline=None)
@given(answers())
def test_round_trip(answer: tuple[str, str, int]) -> None:
    text, thought, label = answer
    assert extract_prediction(text) == Extraction(thought.strip(), label)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_without_label_key_never_yields_a_label(text: str) -> None:
    lowered = text.lower()
    assume("label" not in lowered and "prediction" not in lowered)
    assert extract_prediction(text).label is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(prose, st.dictionaries(st.text(max_size=12), json_values, max_size=4), prose)
def test_json_without_label_key_never_yields_a_label(before: str, obj: dict, after: str) -> None:
    assume(not any("label" in k.lower() or "prediction" in k.lower() for k in obj))
    assert extract_prediction(before + json.dumps(obj) + after).label is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), labels, st.data())
def test_truncation(thought: str, label: int, data: st.DataObject) -> None:
    """Cut after the label value: both fields survive. Cut before it ends: no label is invented."""
    text = answer_text(thought, label)
    value_end = text.rindex(str(label)) + 1
    cut = data.draw(st.integers(min_value=value_end, max_value=len(text)), label="cut after label")
    assert extract_prediction(text[:cut]) == Extraction(thought.strip(), label)
    cut = data.draw(st.integers(min_value=0, max_value=value_end - 1), label="cut before label")
    assert extract_prediction(text[:cut]).label is None
