"""Batched generation for any Hugging Face causal LM (plain, 4-bit, or peft-wrapped): greedy, or k sampled chains.

Prompts are sorted by length (longest first, so an out-of-memory shows up on the first batch), left-padded so
every row's last prompt token sits in the same column, and decoded with the KV cache. A row stops at EOS or as
soon as its generated text closes a top-level JSON object (:class:`JsonObjectStop`): the answer format is one
object, so anything after its ``}`` is wasted decoding. Results come back in input order.

Sampling (:func:`sample_chains`, for self-consistency) differs from ``generate(do_sample=True,
num_return_sequences=k)`` in two ways, both on purpose:

* **One prefill per prompt.** transformers 5.x ``generate`` repeats ``input_ids`` k times
  (``_expand_inputs_for_generation``) *before* the prefill, so the prompt is encoded k times. Here the prompt
  minus its last token is run once, the KV cache is repeated k times (``Cache.batch_repeat_interleave``), and
  ``generate`` continues from it (it only feeds the uncached last token).
* **One random stream per chain.** ``generate`` samples with ``torch.multinomial`` on the global generator, so a
  row's sample depends on which other rows share its batch. :class:`SeededSampling` instead draws Gumbel noise
  from a ``torch.Generator`` per chain (seeded from the row and chain index) and lets greedy decoding take the
  argmax: ``argmax(logits / T + Gumbel)`` is an exact draw from ``softmax(logits / T)`` (Gumbel-max), so results
  do not depend on batch size, order or padding beyond float rounding. The greedy reference chain can ride in the
  same batch: a row without a generator gets no noise and decodes greedily.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TopPLogitsWarper,
)

from nlicot.prompt import end_of_answer_id

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
    """One row's output: the text (special tokens removed), its token ids (no EOS/padding) and why it ended.

    ``mean_logprob``: mean log-probability of the generated tokens under the model at temperature 1 (no top-p),
    recorded by :func:`sample_chains` (None from :func:`generate_batched`); used to break vote ties.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    mean_logprob: float | None = None

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


@dataclass(frozen=True)
class Chains:
    """One prompt's sampled chains (in chain order) and, when asked for, its greedy chain (not a vote)."""

    samples: list[Generated]
    greedy: Generated | None = None


def chain_seed(seed: int, key: str, chain: int) -> int:
    """Seed of chain ``chain`` of the row named ``key``: a hash, so it depends on nothing but these three."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{chain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch.Generator seeds are at most 64-bit; stay positive


class SeededSampling(LogitsProcessor):
    """Per-row sampling for greedy ``generate``: temperature + top-p, then Gumbel noise from the row's generator.

    A row whose seed is None gets the raw scores back, so it decodes greedily in the same batch. Each step also
    records the log-probability (temperature 1, no top-p) of the token the row is about to take, which is the
    argmax of what this returns (greedy decoding, and this is the last processor).
    """

    def __init__(self, seeds: Sequence[int | None], temperature: float, top_p: float, device: torch.device) -> None:
        self.generators = [None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.sampled = torch.tensor([g is not None for g in self.generators], device=device)
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.step_logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = scores / self.temperature
        if self.top_p is not None:
            warped = self.top_p(input_ids, warped)
        noise = torch.zeros_like(scores)
        tiny = torch.finfo(scores.dtype).tiny
        for row, generator in enumerate(self.generators):
            if generator is not None:  # Gumbel = -log(Exp(1)); the clamp keeps a drawn 0 from becoming +inf
                noise[row].exponential_(generator=generator).clamp_(min=tiny).log_().neg_()
        final = torch.where(self.sampled[:, None], warped + noise, scores)
        self.step_logprobs.append(scores.log_softmax(-1).gather(1, final.argmax(-1, keepdim=True)).squeeze(1))
        return final

    def mean_logprobs(self, lengths: Sequence[int]) -> list[float | None]:
        """Each row's mean token log-probability over its first ``lengths[row]`` tokens (None for 0 tokens)."""
        if not self.step_logprobs:
            return [None] * len(lengths)
        table = torch.stack(self.step_logprobs, dim=1).cpu()
        return [float(table[row, :n].mean()) if n else None for row, n in enumerate(lengths)]


def _shared_prefill(model: Any, ids: torch.Tensor, mask: torch.Tensor, copies: int) -> DynamicCache:
    """The KV cache of every prompt but its last token, computed once per prompt and repeated ``copies`` times.

    Positions follow ``generate``'s own rule for left padding (mask cumsum − 1), so the continuation is the one
    ``generate`` would produce from scratch; the uncached last token is what ``generate`` then feeds first.
    """
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache,
          use_cache=True, logits_to_keep=1)  # fmt: skip
    cache.batch_repeat_interleave(copies)
    return cache


def compute_autocast(model: Any) -> torch.autocast:
    """The autocast a bf16/fp16 model runs under, as Lightning's ``bf16-mixed`` puts one around ``predict_step``.

    Generation evaluation runs in a callback (``on_validation_epoch_end``), outside any step and so outside
    Lightning's autocast: without this it would decode a bf16 model through fp32 LoRA/attention arithmetic while
    ``predict`` decodes in bf16, and the two would report different accuracies for one checkpoint. The compute
    dtype is the input embeddings' (nlicot/precision.py keeps them in it); fp32 models get no autocast.
    """
    weight = model.get_input_embeddings().weight
    half = weight.dtype in (torch.bfloat16, torch.float16)
    return torch.autocast(weight.device.type, dtype=weight.dtype if half else torch.bfloat16, enabled=half,
                          cache_enabled=False)  # fmt: skip


def _decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    copies: int,
    max_new_tokens: int,
    batch_size: int,
    stop_at_json: bool,
    share_prefill: bool,
    processor_for: Callable[[list[int], torch.device], SeededSampling] | None,
    on_batch: Callable[[int], None] | None,
) -> list[list[Generated]]:
    """``copies`` continuations of each prompt (rows of a prompt are adjacent), in input order.

    ``batch_size`` counts decoded rows, so a batch holds ``batch_size // copies`` prompts (at least one).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    eos = end_of_answer_id(tokenizer)  # what the model was trained to end with (a chat model: its end of turn)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos, pad_token_id=pad
    )
    pieces = token_pieces(tokenizer) if stop_at_json else None
    device = model.get_input_embeddings().weight.device
    results: list[list[Generated] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with compute_autocast(model):  # the arithmetic predict uses, whoever calls
            for batch in length_sorted_batches([len(p) for p in prompts], max(1, batch_size // copies)):
                ids, mask = (t.to(device) for t in left_pad([prompts[i] for i in batch], pad))
                extra: dict[str, Any] = {}
                if copies > 1:
                    if share_prefill and ids.shape[1] > 1:
                        extra["cache"] = _shared_prefill(model, ids, mask, copies)
                    ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
                criteria = StoppingCriteriaList()
                stop = None
                if pieces is not None:
                    stop = JsonObjectStop(pieces, ids.shape[1], ids.shape[0])
                    criteria.append(stop)
                processor = processor_for(batch, device) if processor_for is not None else None
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=config,
                    stopping_criteria=criteria,
                    logits_processor=LogitsProcessorList([processor]) if processor is not None else None,
                    **extra,
                )
                new_tokens = out[:, ids.shape[1] :].tolist()
                rows = [_finish(tokenizer, new_tokens[r], eos, stop.closed_at[r] if stop is not None else None)
                        for r in range(len(new_tokens))]  # fmt: skip
                if processor is not None:
                    logprobs = processor.mean_logprobs([g.num_tokens for g in rows])
                    rows = [Generated(g.text, g.token_ids, g.finish_reason, lp) for g, lp in zip(rows, logprobs)]
                for slot, index in enumerate(batch):
                    results[index] = rows[slot * copies : (slot + 1) * copies]
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]  # every slot is filled above


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
    out = _decode(model, tokenizer, prompts, copies=1, max_new_tokens=max_new_tokens, batch_size=batch_size,
                  stop_at_json=stop_at_json, share_prefill=False, processor_for=None, on_batch=on_batch)  # fmt: skip
    return [rows[0] for rows in out]


@torch.inference_mode()
def sample_chains(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    keys: Sequence[str],
    *,
    num_samples: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int = 0,
    greedy: bool = False,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stop_at_json: bool = True,
    share_prefill: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[Chains]:
    """``num_samples`` sampled chains per prompt (+ its greedy chain if ``greedy``), decoded together.

    ``keys`` names each prompt (the row id): chain j of a prompt is drawn from ``chain_seed(seed, key, j)``, so a
    row's chains are the same whatever else is in the batch. ``batch_size`` counts decoded sequences
    (``num_samples + greedy`` per prompt); ``share_prefill=False`` repeats the prompt before the prefill as
    ``generate(num_return_sequences=k)`` does (same tokens, for comparison).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if len(keys) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
    head: list[int | None] = [None] if greedy else []

    def processor_for(batch: list[int], device: torch.device) -> SeededSampling:
        seeds = [s for i in batch for s in head + [chain_seed(seed, str(keys[i]), j) for j in range(num_samples)]]
        return SeededSampling(seeds, temperature, top_p, device)

    out = _decode(model, tokenizer, prompts, copies=len(head) + num_samples, max_new_tokens=max_new_tokens,
                  batch_size=batch_size, stop_at_json=stop_at_json, share_prefill=share_prefill,
                  processor_for=processor_for, on_batch=on_batch)  # fmt: skip
    return [Chains(samples=rows[len(head) :], greedy=rows[0] if greedy else None) for rows in out]


def _finish(tokenizer: Any, tokens: list[int], eos: int, closed_at: int | None) -> Generated:
    """Cut a row's generated tokens where it really ended (the rest is padding) and say why."""
    reason: FinishReason = "length"  # neither closed nor EOS: the row ran to max_new_tokens
    if closed_at is not None:
        tokens, reason = tokens[:closed_at], "json"
    elif eos in tokens:
        tokens, reason = tokens[: tokens.index(eos)], "eos"
    return Generated(tokenizer.decode(tokens, skip_special_tokens=True), tokens, reason)
