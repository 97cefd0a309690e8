"""System prompts, few-shot examples and message builders for every API stage.

They ask for the corpus style (docs/corpus_format.md): exactly ``step 1: … step 2: … step 3: …``, step 3 opening
with the verdict (``entailment, because …`` for label 1, ``no entailment, because …`` for 0), 35 to 90 words.
Replies are read by :mod:`data_gen.answers`, which re-prompts only for an unusable reply and records how far a
usable one strays from this style as quality flags; the reasons it gives go back to the model verbatim.
"""

from __future__ import annotations

import json
from typing import Any

from data_gen.row_workflow import Message

LABEL_NAMES = {1: "entailment", 0: "no entailment"}
REPROMPT_PREFIX = "Your reply could not be used:"

_STEPS_RULES = (
    "Reason in exactly three short steps, one sentence each, 35 to 90 words in total:\n"
    "step 1: what the premise states that matters for the hypothesis.\n"
    "step 2: how the hypothesis relates to it (same fact, more general, contradiction, quantity, time, missing "
    "information, ...).\n"
    'step 3: the verdict first, "entailment, because ..." or "no entailment, because ...", then the reason.\n'
    "Label 1 means the premise entails the hypothesis; label 0 means it does not (contradiction or not enough "
    "information)."
)

SYSTEM = {
    "generate": (
        "You annotate natural language inference (NLI) pairs: does the premise entail the hypothesis?\n"
        f"{_STEPS_RULES}\n"
        'Answer with one JSON object and nothing else: {"thought_process": "step 1: ... step 2: ... step 3: ...", '
        '"predicted_label": 1 or 0}'
    ),
    "reflect": (
        "You review a flawed chain of thought for a natural language inference (NLI) pair whose correct label is "
        "given. First name the flaw in one sentence. Then write a corrected chain of thought that reaches the "
        "correct label from the premise and hypothesis alone (never mention that the label was given).\n"
        f"{_STEPS_RULES}\n"
        'Answer with one JSON object and nothing else: {"flaw_analysis": "...", "thought_process": '
        '"step 1: ... step 2: ... step 3: ...", "predicted_label": <the correct label>}'
    ),
    "judge": (
        "You grade a chain of thought written for a natural language inference (NLI) pair with a known correct "
        "label. Give each criterion an integer from 1 (bad) to 5 (excellent): coherence (each step follows from "
        "the previous one), correctness (true to the premise, and the reasoning supports the correct label), "
        "brevity (three short steps, no filler or repetition).\n"
        'Answer with one JSON object and nothing else: {"coherence": n, "correctness": n, "brevity": n, '
        '"critique": "one sentence on the weakest point"}'
    ),
    "improve": (
        "You rewrite a chain of thought for a natural language inference (NLI) pair so that it fixes the critique "
        "it received and reaches the correct label, which is given (never mention that it was given).\n"
        f"{_STEPS_RULES}\n"
        'Answer with one JSON object and nothing else: {"thought_process": "step 1: ... step 2: ... step 3: ...", '
        '"predicted_label": <the correct label>}'
    ),
}

_GENERATE_SHOTS = (
    (
        "A woman in a red coat is feeding pigeons in a city square.",
        "A person is outdoors with birds.",
        "step 1: The premise says a woman is feeding pigeons in a city square. step 2: A woman is a person, pigeons "
        "are birds and a city square is outdoors, so the hypothesis only states the premise more generally. "
        "step 3: entailment, because every part of the hypothesis follows from the premise.",
        1,
    ),
    (
        "The museum closed early on Monday because of a power cut.",
        "The museum was closed all week.",
        "step 1: The premise says the museum closed early on Monday because of a power cut. step 2: The hypothesis "
        "claims it was closed all week, far more than one early closing on one day. step 3: no entailment, "
        "because the premise says nothing about the other days of the week.",
        0,
    ),
)
_REFLECT_SHOT = (
    "Two children are building a sandcastle on the beach.",
    "Nobody is at the beach.",
    0,
    "step 1: The premise describes a beach. step 2: The hypothesis is about the beach too, so it matches. "
    "step 3: entailment, because both talk about the beach.",
    1,
    "The thought matched the topic instead of checking the claim: two children on the beach contradict "
    '"nobody is at the beach".',
    "step 1: The premise says two children are building a sandcastle on the beach. step 2: The hypothesis says "
    "nobody is at the beach, but the two children are people at the beach. step 3: no entailment, because the "
    "premise contradicts the hypothesis.",
)


def task_of(system_prompt: str) -> str | None:
    """Which stage a system prompt belongs to (the loopback server uses it to answer in kind)."""
    return next((task for task, text in SYSTEM.items() if text == system_prompt), None)


def flat(text: str) -> str:
    """One line, single spaces: newlines in a premise must not break the message layout."""
    return " ".join(str(text).split())


def _pair(premise: str, hypothesis: str) -> str:
    return f"Premise: {flat(premise)}\nHypothesis: {flat(hypothesis)}"


def _gold(label: int) -> str:
    return f"Gold label: {label} ({LABEL_NAMES[label]})"


def _answer(**fields: Any) -> str:
    return json.dumps(fields, ensure_ascii=False)


def _chat(task: str, user: str, shots: tuple[tuple[str, str], ...] = ()) -> tuple[Message, ...]:
    turns = [m for u, a in shots for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    return ({"role": "system", "content": SYSTEM[task]}, *turns, {"role": "user", "content": user})


def generation_messages(premise: str, hypothesis: str) -> tuple[Message, ...]:
    shots = tuple((_pair(p, h), _answer(thought_process=t, predicted_label=lab)) for p, h, t, lab in _GENERATE_SHOTS)
    return _chat("generate", _pair(premise, hypothesis), shots)


def _reflect_user(premise: str, hypothesis: str, gold: int, thought: str, predicted: int) -> str:
    return f"{_pair(premise, hypothesis)}\n{_gold(gold)}\nFlawed thought: {flat(thought)}\nFlawed label: {predicted}"


def reflection_messages(premise: str, hypothesis: str, gold: int, thought: str, predicted: int) -> tuple[Message, ...]:
    p, h, g, t, lab, flaw, fixed = _REFLECT_SHOT
    shot = (_reflect_user(p, h, g, t, lab), _answer(flaw_analysis=flaw, thought_process=fixed, predicted_label=g))
    return _chat("reflect", _reflect_user(premise, hypothesis, gold, thought, predicted), (shot,))


def judge_messages(premise: str, hypothesis: str, gold: int, thought: str) -> tuple[Message, ...]:
    return _chat("judge", f"{_pair(premise, hypothesis)}\n{_gold(gold)}\nThought: {flat(thought)}")


def improve_messages(premise: str, hypothesis: str, gold: int, thought: str, scores: dict[str, Any]) -> tuple[Message, ...]:
    graded = ", ".join(f"{k} {scores[k]}" for k in SCORE_KEYS)
    critique = flat(scores["critique"]) or "(none given)"
    user = f"{_pair(premise, hypothesis)}\n{_gold(gold)}\nThought: {flat(thought)}\nScores: {graded}\nCritique: {critique}"
    return _chat("improve", user)


def reprompt(reason: str) -> str:
    return f"{REPROMPT_PREFIX} {reason}. Reply again with only the JSON object described in the instructions."


SCORE_KEYS = ("coherence", "correctness", "brevity")
