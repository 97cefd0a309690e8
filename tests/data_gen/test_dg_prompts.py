"""Messages for each stage, the re-prompt loop, and the fake server answering each stage in kind."""

from __future__ import annotations

import json

import pytest
from fake_api import FakeMistral

from data_gen import answers, prompts
from data_gen.errors import RowFailed
from data_gen.row_workflow import ChatRequest, InvalidAnswer, Reply, ask

GOOD = "step 1: The premise says a man sleeps. step 2: Sleeping is resting. step 3: entailment, because sleeping is a way of resting."


def _answer(**fields) -> str:
    return json.dumps(fields)


def test_ask_reprompts_with_the_reason_then_gives_up():
    request = ChatRequest("m", prompts.generation_messages("A man sleeps.", "A man rests."), 100, 0.0)
    flow = ask(request, answers.parse_generation, 2, prompts.reprompt)
    first = next(flow)
    assert first.messages == request.messages
    second = flow.send(Reply("not json", 1, 1, "m"))
    assert second.messages[-2] == {"role": "assistant", "content": "not json"}
    assert second.messages[-1]["content"].startswith(prompts.REPROMPT_PREFIX + " it contains no JSON object")
    with pytest.raises(RowFailed, match="no valid answer in 2 tries"):
        flow.send(Reply(_answer(thought_process=GOOD, predicted_label=3), 1, 1, "m"))
    flow = ask(request, answers.parse_generation, 2, prompts.reprompt)
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
            (prompts.generation_messages("P.", "H."), answers.parse_generation),
            (prompts.reflection_messages("P.", "H.", 0, GOOD, 1), answers.parse_reflection(0)),
            (prompts.judge_messages("P.", "H.", 1, GOOD), answers.parse_scores),
            (prompts.improve_messages("P.", "H.", 1, GOOD, scores), answers.parse_improvement(1)),
        ]
        for messages, parse in cases:
            parse(fake.answer(list(messages), None))
            for fault in ("bad_json", "bad_label"):
                with pytest.raises(InvalidAnswer):
                    parse(fake.answer(list(messages), fault))
    finally:
        fake.stop()
