"""Answer checkers (the corpus thought style), the re-prompt loop, and the fake server answering each stage in kind."""

from __future__ import annotations

import json

import pytest

from data_gen import prompts
from data_gen.errors import RowFailed
from fake_api import FakeMistral
from data_gen.workflow import ChatRequest, InvalidAnswer, Reply, ask

GOOD = "step 1: The premise says a man sleeps. step 2: Sleeping is resting. step 3: entailment, because sleeping is a way of resting."


def _answer(**fields) -> str:
    return json.dumps(fields)


def test_a_valid_generation_is_accepted_and_normalised():
    messy = "Step 1. The premise says a man sleeps.\n  Step 2) Sleeping is resting. STEP 3: Entailment, because sleeping is a way of resting."
    parsed = prompts.parse_generation(_answer(thought_process=messy, predicted_label=1))
    assert parsed == {"thought_process": GOOD.replace("step 3: entailment", "step 3: Entailment"), "predicted_label": 1}
    assert prompts.parse_generation(_answer(thought_process=GOOD, predicted_label="1"))["predicted_label"] == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"thought_process": "step 1: x', "not valid JSON"),
        ("[1, 2]", "not an object"),
        (_answer(thought_process=GOOD, predicted_label=7), '"predicted_label" must be the number 0 or 1, got 7'),
        (_answer(thought_process=GOOD, predicted_label=True), "got true"),
        (_answer(thought_process=GOOD), "got null"),
        (_answer(thought_process="", predicted_label=1), '"thought_process" must be a non-empty string'),
        (_answer(thought_process="step 1: a. step 2: b.", predicted_label=1), "found step markers [1, 2]"),
        (_answer(thought_process=GOOD + " step 4: more.", predicted_label=1), "[1, 2, 3, 4]"),
        (_answer(thought_process="So: " + GOOD, predicted_label=1), "exactly"),
        (_answer(thought_process=GOOD, predicted_label=0), 'step 3 says "entailment" but predicted_label is 0'),
        (_answer(thought_process=GOOD.replace("entailment, because", "yes, because"), predicted_label=1), "step 3 must start"),
    ],
)
def test_invalid_generations_are_refused_with_a_message_for_the_model(text, message):
    with pytest.raises(InvalidAnswer) as e:
        prompts.parse_generation(text)
    assert message in str(e.value)


def test_a_fenced_answer_is_unwrapped():
    assert prompts.parse_json('```json\n{"a": 1}\n```') == {"a": 1}


def test_reflection_and_improvement_must_reach_the_gold_label():
    fixed = GOOD.replace("entailment, because", "no entailment, because")
    ok = prompts.parse_reflection(0)(_answer(flaw_analysis="Wrong.", thought_process=fixed, predicted_label=0))
    assert ok["flaw_analysis"] == "Wrong." and ok["thought_process"].startswith("step 1:")
    with pytest.raises(InvalidAnswer, match="must be the correct label 0, got 1"):
        prompts.parse_reflection(0)(_answer(flaw_analysis="Wrong.", thought_process=GOOD, predicted_label=1))
    with pytest.raises(InvalidAnswer, match='"flaw_analysis"'):
        prompts.parse_reflection(1)(_answer(thought_process=GOOD, predicted_label=1))
    assert prompts.parse_improvement(1)(_answer(thought_process=GOOD, predicted_label=1)) == GOOD


def test_scores_must_be_integers_from_1_to_5():
    assert prompts.parse_scores(_answer(coherence=5, correctness="4", brevity=1, critique="Fine."))["correctness"] == 4
    for bad in (0, 6, 2.5, "high", None):
        with pytest.raises(InvalidAnswer, match='"brevity" must be an integer from 1 to 5'):
            prompts.parse_scores(_answer(coherence=5, correctness=4, brevity=bad, critique="x"))


def test_ask_reprompts_with_the_reason_then_gives_up():
    request = ChatRequest("m", prompts.generation_messages("A man sleeps.", "A man rests."), 100, 0.0)
    flow = ask(request, prompts.parse_generation, 2, prompts.reprompt)
    first = next(flow)
    assert first.messages == request.messages
    second = flow.send(Reply("not json", 1, 1, "m"))
    assert second.messages[-2] == {"role": "assistant", "content": "not json"}
    assert second.messages[-1]["content"].startswith(prompts.REPROMPT_PREFIX + " it is not valid JSON")
    with pytest.raises(RowFailed, match="no valid answer in 2 tries"):
        flow.send(Reply(_answer(thought_process=GOOD, predicted_label=3), 1, 1, "m"))
    flow = ask(request, prompts.parse_generation, 2, prompts.reprompt)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(Reply(_answer(thought_process=GOOD, predicted_label=1), 1, 1, "m"))
    assert done.value.value["predicted_label"] == 1


def test_messages_flatten_newlines_so_the_layout_holds():
    messages = prompts.reflection_messages("Line one.\nLine two.", "H.", 1, GOOD, 0)
    assert prompts.task_of(messages[0]["content"]) == "reflect"
    assert messages[-1]["content"].splitlines() == [
        "Premise: Line one. Line two.", "Hypothesis: H.", "Gold label: 1 (entailment)", f"Flawed thought: {GOOD}", "Flawed label: 0",
    ]


def test_the_fake_server_answers_every_stage_in_a_form_its_checker_accepts():
    fake = FakeMistral()
    try:
        scores = {"coherence": 2, "correctness": 3, "brevity": 4, "critique": "Vague."}
        cases = [
            (prompts.generation_messages("P.", "H."), prompts.parse_generation),
            (prompts.reflection_messages("P.", "H.", 0, GOOD, 1), prompts.parse_reflection(0)),
            (prompts.judge_messages("P.", "H.", 1, GOOD), prompts.parse_scores),
            (prompts.improve_messages("P.", "H.", 1, GOOD, scores), prompts.parse_improvement(1)),
        ]
        for messages, parse in cases:
            parse(fake.answer(list(messages), None))
            for fault in ("bad_json", "bad_label"):
                with pytest.raises(InvalidAnswer):
                    parse(fake.answer(list(messages), fault))
    finally:
        fake.stop()
