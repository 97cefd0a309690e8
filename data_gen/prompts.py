"""System prompts, few-shot examples, message builders and answer checkers for every API stage.

The thought style is the corpus contract (docs/corpus_format.md): exactly ``step 1: … step 2: … step 3: …``,
step 3 opening with the verdict (``entailment, because …`` for label 1, ``no entailment, because …`` for 0).
The checkers enforce it, and their messages go back to the model verbatim when it has to try again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from data_gen.workflow import InvalidAnswer, Message

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


def _flat(text: str) -> str:
    """One line, single spaces: newlines in a premise must not break the message layout."""
    return " ".join(str(text).split())


def _pair(premise: str, hypothesis: str) -> str:
    return f"Premise: {_flat(premise)}\nHypothesis: {_flat(hypothesis)}"


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
    return f"{_pair(premise, hypothesis)}\n{_gold(gold)}\nFlawed thought: {_flat(thought)}\nFlawed label: {predicted}"


def reflection_messages(premise: str, hypothesis: str, gold: int, thought: str, predicted: int) -> tuple[Message, ...]:
    p, h, g, t, lab, flaw, fixed = _REFLECT_SHOT
    shot = (_reflect_user(p, h, g, t, lab), _answer(flaw_analysis=flaw, thought_process=fixed, predicted_label=g))
    return _chat("reflect", _reflect_user(premise, hypothesis, gold, thought, predicted), (shot,))


def judge_messages(premise: str, hypothesis: str, gold: int, thought: str) -> tuple[Message, ...]:
    return _chat("judge", f"{_pair(premise, hypothesis)}\n{_gold(gold)}\nThought: {_flat(thought)}")


def improve_messages(premise: str, hypothesis: str, gold: int, thought: str, scores: dict[str, Any]) -> tuple[Message, ...]:
    graded = ", ".join(f"{k} {scores[k]}" for k in SCORE_KEYS)
    user = f"{_pair(premise, hypothesis)}\n{_gold(gold)}\nThought: {_flat(thought)}\nScores: {graded}\nCritique: {_flat(scores['critique'])}"
    return _chat("improve", user)


def reprompt(reason: str) -> str:
    return f"{REPROMPT_PREFIX} {reason}. Reply again with only the JSON object described in the instructions."


# --- answer checkers: return the cleaned fields or raise InvalidAnswer with a message for the model ---

SCORE_KEYS = ("coherence", "correctness", "brevity")
_STEP = re.compile(r"\bstep\s*(\d+)\s*[:.)\-]", re.IGNORECASE)


def parse_json(text: str) -> dict[str, Any]:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)  # JSON mode should not, but some servers do
    if fenced:
        body = fenced.group(1)
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise InvalidAnswer(f"it is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict):
        raise InvalidAnswer(f"it is JSON but not an object (got {type(obj).__name__})")
    return obj


def _label(obj: dict[str, Any]) -> int:
    value = obj.get("predicted_label")
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    raise InvalidAnswer(f'"predicted_label" must be the number 0 or 1, got {json.dumps(value)}')


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidAnswer(f'"{key}" must be a non-empty string')
    return _flat(value)


def check_thought(thought: str, label: int) -> str:
    """The thought in canonical form (``step N: `` markers, single spaces) if it follows the 3-step style."""
    marks = list(_STEP.finditer(thought))
    numbers = [int(m.group(1)) for m in marks]
    if numbers != [1, 2, 3] or marks[0].start() != 0:
        raise InvalidAnswer(
            '"thought_process" must be exactly "step 1: ... step 2: ... step 3: ..." '
            f"(found step markers {numbers or 'none'})"
        )
    parts = [thought[a.end() : b.start() if b else None].strip() for a, b in zip(marks, [*marks[1:], None])]
    if not all(parts):
        raise InvalidAnswer("every step needs text after its marker")
    verdict = parts[2].lower()
    says = 0 if verdict.startswith(("no entailment", "not entailment")) else 1 if verdict.startswith("entailment") else None
    if says is None:
        raise InvalidAnswer('step 3 must start with "entailment, because" or "no entailment, because"')
    if says != label:
        raise InvalidAnswer(f'step 3 says "{LABEL_NAMES[says]}" but predicted_label is {label}')
    return " ".join(f"step {i}: {p}" for i, p in enumerate(parts, start=1))


def parse_generation(text: str) -> dict[str, Any]:
    obj = parse_json(text)
    label = _label(obj)
    return {"thought_process": check_thought(_text(obj, "thought_process"), label), "predicted_label": label}


def _for_gold(gold: int, label: int) -> None:
    if label != gold:
        raise InvalidAnswer(f'"predicted_label" must be the correct label {gold}, got {label}')


def parse_reflection(gold: int) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        obj = parse_json(text)
        flaw = _text(obj, "flaw_analysis")
        label = _label(obj)
        _for_gold(gold, label)
        return {"flaw_analysis": flaw, "thought_process": check_thought(_text(obj, "thought_process"), label)}

    return parse


def parse_improvement(gold: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        obj = parse_json(text)
        label = _label(obj)
        _for_gold(gold, label)
        return check_thought(_text(obj, "thought_process"), label)

    return parse


def parse_scores(text: str) -> dict[str, Any]:
    obj = parse_json(text)
    scores: dict[str, Any] = {}
    for key in SCORE_KEYS:
        value = obj.get(key)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise InvalidAnswer(f'"{key}" must be an integer from 1 to 5, got {json.dumps(value)}')
        scores[key] = value
    scores["critique"] = _text(obj, "critique")
    return scores
