"""The one prompt template and answer format, used by training, validation, test and predict alike.

Token layout of one example (Mistral v3 instruct format, identical to mistral-common's encoding)::

    <s> [INST] ▁Premise: … Hypothesis: … [/INST] ▁{"thought_process": "step 1: …", "predicted_label": 1} </s>
    └──────────── prompt: labels = -100 ─────────┘ └──────────── answer: supervised ─────────────────────┘

Special tokens are placed by id, never parsed out of text, so a premise that happens to contain ``[INST]``
cannot forge a turn boundary, and the result does not depend on tokenizer ``legacy`` flags.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

# Short on purpose: every prompt token is paid for in every example, and a fine-tuned model needs a task marker,
# not an essay. 30 tokens of overhead instead of 80 lifts 512-token packing from ~91 % to ~97 % (benchmarks/).
INSTRUCTION = "Does the premise entail the hypothesis? Think in 3 steps, then answer in JSON (1 = entailment, 0 = not)."
USER_TEMPLATE = "Premise: {premise}\nHypothesis: {hypothesis}\n{instruction}"


def template_fingerprint() -> str:
    """Changes whenever the template text changes, so cached tokenizations are invalidated."""
    return hashlib.sha256((INSTRUCTION + "\0" + USER_TEMPLATE).encode()).hexdigest()[:16]


def user_message(premise: str, hypothesis: str) -> str:
    """The user turn's text."""
    return USER_TEMPLATE.format(instruction=INSTRUCTION, premise=premise.strip(), hypothesis=hypothesis.strip())


def answer_text(thought_process: str, label: int) -> str:
    """The assistant turn: the JSON object the model learns to write (key order fixed: thought, then label)."""
    return json.dumps({"thought_process": thought_process.strip(), "predicted_label": int(label)}, ensure_ascii=False)


class TemplateTokenError(ValueError):
    """The tokenizer lacks the control tokens the template places; the CLI prints it as one ``error:`` line."""


@dataclass(frozen=True)
class SpecialIds:
    """The ids the template places by hand."""

    bos: int
    eos: int
    inst: int
    inst_end: int

    @classmethod
    def of(cls, tokenizer) -> SpecialIds:
        inst, inst_end = tokenizer.convert_tokens_to_ids(["[INST]", "[/INST]"])
        unk = tokenizer.unk_token_id
        if inst in (None, unk) or inst_end in (None, unk):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise TemplateTokenError(
                f"tokenizer {name} has no [INST]/[/INST] control tokens (it is not a Mistral v3 tokenizer): add them "
                "as special tokens (tokenizer.add_special_tokens({'additional_special_tokens': ['[INST]', '[/INST]']}), "
                "then save the model folder with resized embeddings)"
            )
        return cls(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, inst=inst, inst_end=inst_end)


def wrap_prompt(ids: SpecialIds, user_ids: list[int]) -> list[int]:
    """``<s>[INST] user [/INST]`` as ids."""
    return [ids.bos, ids.inst, *user_ids, ids.inst_end]


def encode_prompts(tokenizer, premises: list[str], hypotheses: list[str]) -> list[list[int]]:
    """Prompt ids for many rows at once (the fast tokenizer batches in Rust)."""
    ids = SpecialIds.of(tokenizer)
    texts = [user_message(p, h) for p, h in zip(premises, hypotheses, strict=True)]
    user = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [wrap_prompt(ids, u) for u in user]


def encode_answers(tokenizer, thoughts: list[str], labels: list[int]) -> list[list[int]]:
    """Answer ids (+ EOS) for many rows at once."""
    eos = tokenizer.eos_token_id
    texts = [answer_text(t, lab) for t, lab in zip(thoughts, labels, strict=True)]
    return [a + [eos] for a in tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]]
