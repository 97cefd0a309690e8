"""What a stage does for one row, written once and driven either request by request or through the Batch API.

A row's work is a generator that *yields* the next :class:`ChatRequest` and is *sent* the :class:`Reply`; it
returns the result record, or raises :class:`RowFailed`. The synchronous driver answers each request as soon as
the API does; the batch driver collects the pending request of every row into one job per round. Because a
workflow is a pure function of the replies it was sent, both drivers rebuild a row cut off by a crash by
replaying the replies they saved (:func:`replay`) instead of paying for them again.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from data_gen.errors import RowFailed

T = TypeVar("T")
Message = dict[str, str]
#: A refusal reason shown to the model is cut to this many characters, so a re-prompt has a known size bound.
MAX_REASON_CHARS = 300


class InvalidAnswer(ValueError):
    """The model's reply is unusable; the message is shown to the model in the re-prompt."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request in JSON output mode."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float
    seed: int | None = None

    def body(self) -> dict[str, Any]:
        """The request body as the API (and a batch input line) takes it."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "response_format": {"type": "json_object"},
        }
        if self.seed is not None:
            body["random_seed"] = self.seed
        return body


@dataclass(frozen=True)
class Reply:
    """The model's text and the usage the API billed for it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "model": self.model}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reply:
        return cls(d["text"], int(d["prompt_tokens"]), int(d["completion_tokens"]), d["model"])


Workflow = Generator[ChatRequest, Reply, dict[str, Any]]


@dataclass
class ApiStage:
    """What an API stage hands to the runner."""

    name: str
    rows: list[dict[str, Any]]  # every row this stage should produce a result for, in input order
    workflow: Callable[[dict[str, Any]], Workflow]
    models: tuple[str, ...]  # every model it may call: their prices are checked before anything is sent
    input_duplicates: int = 0  # records of the input that repeated an id already read (kept once; in the summary)


def replay(workflow: Workflow, replies: Iterable[Reply]) -> ChatRequest:
    """Start ``workflow`` and send it ``replies`` (already paid for); return the request it makes next.

    Raises ``StopIteration`` (with the result) or :class:`RowFailed` when the replies already finish the row.
    """
    request = next(workflow)
    for reply in replies:
        request = workflow.send(reply)
    return request


def ask(request: ChatRequest, parse: Callable[[str], T], max_tries: int, reprompt: Callable[[str], str]) -> Generator[ChatRequest, Reply, T]:
    """Ask until ``parse`` accepts the answer; each refusal goes back to the model as a re-prompt.

    Use as ``answer = yield from ask(...)``. Raises :class:`RowFailed` after ``max_tries`` unusable answers.
    """
    messages = request.messages
    reason = ""
    for _ in range(max_tries):
        reply = yield replace(request, messages=messages)
        try:
            return parse(reply.text)
        except InvalidAnswer as e:
            reason = str(e)[:MAX_REASON_CHARS]
            messages = (*messages, {"role": "assistant", "content": reply.text}, {"role": "user", "content": reprompt(reason)})
    raise RowFailed(f"no valid answer in {max_tries} tries; last: {reason}")
