"""Batched greedy generation for any Hugging Face causal LM (plain, 4-bit, or peft-wrapped).

Prompts are sorted by length (longest first, so an out-of-memory shows up on the first batch), left-padded so
every row's last prompt token sits in the same column, and decoded with the KV cache. A row stops at EOS or as
soon as its generated text closes a top-level JSON object (:class:`JsonObjectStop`): the answer format is one
object, so anything after its ``}`` is wasted decoding. Results come back in input order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

#: Enough for ``{"thought_process": "step 1: … step 2: … step 3: …", "predicted_label": 1}`` at the corpus's
#: longest thoughts (~250 tokens) with some slack.
DEFAULT_MAX_NEW_TOKENS = 320
#: Rows decoded together. On the tiny CPU model 32 is ~2x faster than 16 (benchmarks/predict_speed.py); on a GPU a
#: 4-bit 7B model's KV cache for 32 rows of ~450 tokens is under 2 GB.
DEFAULT_BATCH_SIZE = 32
FinishReason = Literal["json", "eos", "length"]
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class Generated:
    """One row's output: the text (special tokens removed), its token ids (no EOS/padding) and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class JsonCloser:
    """Tracks ``{``/``}`` depth outside JSON strings in a stream of text pieces; ``closed`` once depth returns to 0.

    Braces inside ``"…"`` (with ``\\"`` escapes) do not count, so a thought that mentions ``{x}`` does not end
    generation early.
    """

    __slots__ = ("depth", "in_string", "escaped", "closed")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.closed = False

    def feed(self, piece: str) -> bool:
        """Consume ``piece``; return whether the first top-level object is now closed."""
        for ch in piece:
            if self.closed:
                break
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"' and self.depth > 0:
                self.in_string = True
            elif ch == "{":
                self.depth += 1
            elif ch == "}" and self.depth > 0:
                self.depth -= 1
                self.closed = self.depth == 0
        return self.closed


def token_pieces(tokenizer: Any) -> list[str]:
    """Each vocabulary id's surface text as far as JSON structure goes (``{ } " \\`` and the rest as is).

    Built from ``convert_ids_to_tokens`` (~20 ms for 32k tokens, vs ~0.3 s for decoding one id at a time):
    sentencepiece byte-fallback pieces ``<0x7B>`` become their character, and printable ASCII is literal in
    both sentencepiece and byte-level BPE vocabularies, which is all the brace tracking needs.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    out = []
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            out.append("")
        elif m := _BYTE_TOKEN.fullmatch(piece):
            out.append(chr(int(m.group(1), 16)) if int(m.group(1), 16) < 0x80 else "")
        else:
            out.append(piece)
    return out


class JsonObjectStop(StoppingCriteria):
    """Per-row stopping once the text generated after ``prompt_length`` closes a JSON object.

    ``closed_at[row]`` records how many tokens the row had generated when its object closed (None if it did not),
    so the caller can cut the row there: ``generate`` fills finished rows with padding afterwards.
    """

    def __init__(self, pieces: Sequence[str], prompt_length: int, batch_size: int) -> None:
        self.pieces = pieces
        self.prompt_length = prompt_length
        self.seen = prompt_length
        self.trackers = [JsonCloser() for _ in range(batch_size)]
        self.closed_at: list[int | None] = [None] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.seen :].tolist()
        for row, (tokens, tracker) in enumerate(zip(new, self.trackers)):
            for offset, token in enumerate(tokens):
                if self.closed_at[row] is not None:
                    break
                # Ids past the tokenizer (vocabularies padded for speed) have no text.
                if tracker.feed(self.pieces[token] if token < len(self.pieces) else ""):
                    self.closed_at[row] = self.seen + offset + 1 - self.prompt_length
        self.seen = input_ids.shape[1]
        done = [c is not None for c in self.closed_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` with every row right-aligned (padding on the left)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (little padding, early OOM)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stop_at_json: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generated]:
    """Greedy continuations of ``prompts`` (token id lists, e.g. from ``nlicot.prompt.encode_prompts``).

    The model is put in eval mode for the call (dropout would make greedy decoding random) and restored after.
    ``on_batch(n)`` is called after each batch with its row count, for a progress bar.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos, pad_token_id=pad
    )
    pieces = token_pieces(tokenizer) if stop_at_json else None
    device = model.get_input_embeddings().weight.device
    results: list[Generated | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for batch in length_sorted_batches([len(p) for p in prompts], batch_size):
            ids, mask = left_pad([prompts[i] for i in batch], pad)
            criteria = StoppingCriteriaList()
            stop = None
            if pieces is not None:
                stop = JsonObjectStop(pieces, ids.shape[1], len(batch))
                criteria.append(stop)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=criteria,
            )
            new_tokens = out[:, ids.shape[1] :].tolist()
            for row, index in enumerate(batch):
                closed_at = stop.closed_at[row] if stop is not None else None
                results[index] = _finish(tokenizer, new_tokens[row], eos, closed_at)
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]  # every slot is filled above


def _finish(tokenizer: Any, tokens: list[int], eos: int, closed_at: int | None) -> Generated:
    """Cut a row's generated tokens where it really ended (the rest is padding) and say why."""
    reason: FinishReason = "length"  # neither closed nor EOS: the row ran to max_new_tokens
    if closed_at is not None:
        tokens, reason = tokens[:closed_at], "json"
    elif eos in tokens:
        tokens, reason = tokens[: tokens.index(eos)], "eos"
    return Generated(tokenizer.decode(tokens, skip_special_tokens=True), tokens, reason)
