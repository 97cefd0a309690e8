"""Reading a chain of thought: its numbered steps and the verdict its conclusion states.

Why in nlicot and not in data_gen: both sides read thoughts the same way — data_gen's ``build`` filters the corpus
on the stated verdict (:func:`stated_verdict` against the label), and GRPO can reward a completion whose step 3
states the verdict its label chose. One reader, below both, so the two can never disagree (and nlicot never imports
data_gen). The conclusion decides (a leading verdict, else the clause after the last so / therefore / thus / hence,
else the last sentence's main clause); cues that disagree give ``None`` ("does not say"), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def flat(text: str) -> str:
    """One line, single spaces."""
    return " ".join(str(text).split())


_VERBS = (r"(?:entail\w*|follow\w*|impl(?:y|ies|ied)|support\w*|infer\w*|conclu\w*|deduc\w*|deriv\w*|prov(?:e|es|en|ed)"
          r"|true|correct|valid|confirm\w*|establish\w*|determin\w*|say|tell|know)")
# Spans that mention contradiction without claiming one ("lack of contradictory facts", "nothing in the premise
# contradicts it"), and hedges that assert what follows ("there is no doubt that"): masked, no verdict.
_NOT_A_VERDICT = re.compile(
    r"\b(?:no|not|never|lack\s+of|without|free\s+of|absence\s+of|nothing|none)\s+(?:\w+\s+){0,2}?contradict\w*"
    r"|\b(?:nothing|none)\s+(?:in|of|about|within|from)\s+(?:\w+\s+){0,3}?contradict\w*"
    r"|(?:\b(?:does|do|did|is|are|was)\s*(?:not|n't)|\bnever)\s+(?:\w+\s+)?contradict\w*"
    r"|\b(?:there\s+is\s+)?no\s+(?:doubt|question)\s+that\b|\b(?:cannot|can't|can\s+not)\s+(?:be\s+)?den(?:y|ied)\s+that\b",
    re.IGNORECASE,
)
# "it is not the case that …", "it cannot be said that …": the verdict of the rest, reversed (double negations).
_REVERSING = re.compile(
    r"\b(?:it\s+is\s+|it's\s+)?(?:not\s+(?:the\s+case|true|correct|right)|false|wrong|incorrect|untrue|a\s+mistake)"
    r"\s+(?:to\s+(?:say|claim|conclude|think)\s+)?that\b"
    r"|\b(?:it\s+)?(?:cannot|can't|can\s+not)\s+(?:be\s+)?(?:said|say|claimed|claim)\s+that\b",
    re.IGNORECASE,
)
_NO = re.compile(
    r"\b(?:no|not|non)[\s_-]*entail\w*"
    r"|(?:\b(?:not|never|no|cannot|hardly)|n't|\b(?:fails?|failed|unable)\s+to)(?:\s+[\w,]+){0,3}?\s+" + _VERBS + r"\b"
    r"|\b(?:not\s+possible|impossible)\s+to\s+(?:infer|conclude|determine|deduce|say|tell|know)\b"
    r"|\b(?:entailment|inference)\s+(?:is|was)\s+(?:not\b|impossible|ruled\s+out|absent|lacking|missing)"
    r"|\b(?:not|insufficient|without)\s+(?:enough\s+)?(?:information|evidence|support)\b"
    r"|\bno\s+(?:information|evidence|support|mention|indication|basis)\b"
    # only part of it is supported: "only part of the hypothesis is supported", "little of it is stated"
    r"|\b(?:only\s+(?:a\s+)?(?:part|parts|some|half|partly|partially)|partly|partially|little|none|not\s+all"
    r"|not\s+(?:fully|entirely|completely|wholly))(?:\s+of)?(?:\s+[\w']+){0,5}?\s+(?:support\w*|entail\w*"
    r"|impl(?:y|ies|ied)|stat\w*|mention\w*|back\w*|cover\w*|confirm\w*|establish\w*|follow\w*)\b"
    r"|\b(?:supports?|entails?|implies|confirms?|covers?|states?)\s+only\s+(?:a\s+)?(?:part|some|half|one)\b"
    r"|\bnot\s+(?:mentioned|stated|specified|given|said)\b|\bgoes\s+beyond\b|\bsilent\s+(?:on|about)\b"
    r"|\bcontradict\w*|\bneutral\b|\bunrelated\b|\bmutually\s+exclusive\b|\bmay\s+or\s+may\s+not\b"
    r"|\b(?:unclear|uncertain|undetermined|indeterminate|unsupported|unsubstantiated|unwarranted)\b"
    r"|\bnot\s+necessarily\b|\b(?:hypothesis|it)\s+is\s+false\b"
    r"|\b(?:label|answer)\s*(?:is|:|=)?\s*0\b",
    re.IGNORECASE,
)
_YES = re.compile(
    r"\bentail\w*|\bfollows?\b"
    r"|\b(?:can|could|may)\s+be\s+(?:\w+\s+)?(?:inferred|concluded|deduced|derived)\b"
    r"|\b(?:can|could)\s+(?:safely\s+|logically\s+|reasonably\s+)?(?:conclude|infer|deduce)\b"
    r"|\b(?:implied|supported|confirmed|established|proven|guaranteed)\s+by\b|\b(?:supports|implies|confirms|proves)\b"
    r"|\b(?:hypothesis|it|this)\s+(?:is|must\s+be)\s+(?:\w+\s+)?true\b|\bmust\s+be\s+true\b"
    r"|\b(?:label|answer)\s*(?:is|:|=)?\s*1\b",
    re.IGNORECASE,
)
# A verdict that opens the text and is then argued: "no entailment, because …", "Verdict: entailment."
_LEADING = re.compile(
    r"^[\W_]*(?:(?:verdict|answer|label|conclusion|result)\s*[:=\-]\s*)?(?:(?P<no>(?:no|not|non)[\s_-]*entail\w*"
    r"|contradiction|neutral)|(?P<yes>entail\w*))\s*(?:[,:;.(\u2013\u2014\-]|because\b|since\b|as\b|given\b|$)",
    re.IGNORECASE,
)
# Where the conclusion starts inside a sentence ("…, so the hypothesis is not entailed").
_CONCLUSION = re.compile(
    r"\b(?:so|therefore|thus|hence|consequently|accordingly|as\s+a\s+result|in\s+conclusion|overall|in\s+short"
    r"|(?:which|this)\s+means(?:\s+that)?|it\s+follows\s+that)\b",
    re.IGNORECASE,
)
_REASON_FIRST = re.compile(r"^\W*(?:since|because|as|given|based\s+on|although|though|while|whereas|if)\b", re.I)
_REASON_AFTER = re.compile(r",?\s+\b(?:because|since|given\s+that|as)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def _cues(text: str) -> list[tuple[int, int]]:
    """(position, label) of every verdict phrase; negated phrasings are read (and masked) before the bare words."""
    found = [(m.start(), 0) for m in _NO.finditer(text)]
    masked = _NO.sub(lambda m: " " * len(m.group(0)), text)
    return sorted(found + [(m.start(), 1) for m in _YES.finditer(masked)])


def _clause_verdict(text: str) -> tuple[bool, int | None]:
    """(whether the clause states a verdict, the label it states: ``None`` when its cues disagree)."""
    reversing = _REVERSING.search(text)
    if reversing is not None and not _cues(text[: reversing.start()]):
        stated, verdict = _clause_verdict(text[reversing.end() :])
        return stated, None if verdict is None else 1 - verdict
    labels = {label for _, label in _cues(text)}
    return bool(labels), labels.pop() if len(labels) == 1 else None


def _main_clause(sentence: str) -> str:
    """The sentence without its reason: after the comma of "Since …, X", before the "because" of "X because …"."""
    if _REASON_FIRST.match(sentence):
        return sentence.rsplit(",", 1)[-1] if "," in sentence else sentence
    return _REASON_AFTER.split(sentence, maxsplit=1)[0]


def _conclusions(text: str) -> Iterable[str]:
    """Where a conclusion may be, most decisive first: after the last "so / therefore / thus …" (later markers
    first), then each sentence from the last, its main clause before the whole of it."""
    for m in reversed(list(_CONCLUSION.finditer(text))):
        yield text[m.end() :]
    for sentence in reversed([s for s in _SENTENCE_END.split(text) if s.strip()]):
        yield _main_clause(sentence)
        yield sentence


def verdict_of(text: str, anywhere: bool = False) -> int | None:
    """The label a conclusion states (1 entailment, 0 no entailment), or ``None`` when it states none or is unsure.

    The conclusion decides, not the reasons before it: a verdict that opens the text ("no entailment, because …"),
    else the clause after the last so / therefore / thus / hence, else the last sentence that states one (its main
    clause first: "Since nothing contradicts it, the hypothesis is entailed"). Negations are read before the bare
    words ("is not entailed", "cannot be inferred", "only part of it is supported" are 0), "no contradiction" is no
    verdict, "it is not the case that …" reverses, and cues that disagree within the conclusion give ``None``:
    a reader that is unsure says so instead of guessing. ``anywhere`` is for short label strings: every cue must
    agree.
    """
    if anywhere:
        return _clause_verdict(_NOT_A_VERDICT.sub(lambda m: " " * len(m.group(0)), text))[1]
    return read_verdict(text)[1]


def read_verdict(text: str) -> tuple[bool, int | None]:
    """(whether the conclusion of ``text`` states a verdict, :func:`verdict_of` it): stated but ``None`` is unsure."""
    masked = _NOT_A_VERDICT.sub(lambda m: " " * len(m.group(0)), text)
    lead = _LEADING.match(masked)
    if lead is not None:
        return True, 0 if lead.group("no") else 1
    for clause in _conclusions(masked):
        stated, verdict = _clause_verdict(clause)
        if stated:
            return True, verdict
    return False, None


# --- thought normalisation ---

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
# "step 1:", "Step 1.", "**Step 1:**", "STEP 1 -", "Step 1)", "Step 1 (premise):", "step one:".
_STEP = re.compile(
    r"(?:\*\*|__)?\bstep\s*(\d{1,2}|one|two|three|four|five|six)\b\s*(?:\([^()]{0,40}\))?\s*(?:\*\*|__)?\s*"
    r"(?P<punct>[:.)\-\u2013\u2014])?(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
# "1. ", "2) ", "(3) " at the start of the text or of a sentence/line.
_NUMBERED = re.compile(r"(?:^|(?<=[\n.!?:;]\s)|(?<=[\n]))\s*\(?([1-9])[.)]\s+")


def _markers(text: str) -> list[tuple[int, int, int]]:
    """(start, end, number) of every plausible step marker: ``step N`` ones if any, else ``1.``-style ones."""
    explicit = []
    for m in _STEP.finditer(text):
        at_boundary = m.start() == 0 or re.search(r"[\n.!?:;]\s*$", text[: m.start()]) is not None
        if m.group("punct") or at_boundary:
            n = m.group(1).lower()
            explicit.append((m.start(), m.end(), int(_NUMBER_WORDS.get(n, n))))
    if explicit:
        return explicit
    return [(m.start(), m.end(), int(m.group(1))) for m in _NUMBERED.finditer(text)]


def _sequence(markers: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The markers that number the steps 1, 2, 3 … in order; a later "as in step 2" reference is left as text."""
    chosen: list[tuple[int, int, int]] = []
    for marker in markers:
        if marker[2] == len(chosen) + 1:
            chosen.append(marker)
    return chosen


def split_steps(thought: str) -> tuple[str, list[str]]:
    """(text before step 1, the text of each numbered step); no steps when the thought is not numbered."""
    marks = _sequence(_markers(thought))
    if not marks:
        return flat(thought), []
    ends = [m[0] for m in marks[1:]] + [len(thought)]
    steps = [flat(thought[m[1] : end]).strip("*_ ") for m, end in zip(marks, ends)]
    return flat(thought[: marks[0][0]]), steps


def normalise_thought(thought: str) -> str:
    """Canonical spelling: ``step N: `` markers, single spaces, markdown emphasis around markers dropped."""
    preamble, steps = split_steps(thought)
    if not steps:
        return preamble
    body = " ".join(f"step {i}: {text}".rstrip() for i, text in enumerate(steps, start=1))
    return f"{preamble} {body}" if preamble else body


def conclusion_of(thought: str) -> str:
    """The last step (step 3 of a 3-step thought), or the whole of an unnumbered thought."""
    _, steps = split_steps(thought)
    return steps[-1] if len(steps) >= 2 else flat(thought)


def stated_verdict(thought: str) -> int | None:
    """The verdict the thought's conclusion states (:func:`verdict_of` of its last step)."""
    return verdict_of(conclusion_of(thought))


def starts_with_step_marker(text: str) -> bool:
    """Whether ``text`` opens with a step marker (``step 1:``, ``Step one.``, ``1.``, ``(2)``)."""
    return bool(_STEP.match(text) or _NUMBERED.match(text))
