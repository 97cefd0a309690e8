"""The one prompt template and answer format, used by training, validation, test, predict and export alike.

The user text and the answer are the same for every model; how they are wrapped depends on the model family
(:func:`prompt_format`):

* **Mistral v3** (a tokenizer with ``[INST]``/``[/INST]`` control tokens): byte-exact mistral-common encoding::

    <s> [INST] ▁Premise: … Hypothesis: … [/INST] ▁{"thought_process": "step 1: …", "predicted_label": 1} </s>
    └──────────── prompt: labels = -100 ─────────┘ └──────────── answer: supervised ─────────────────────┘

* **Any other model with a chat template** (e.g. SmolLM2): the tokenizer's own template, one user turn::

    <|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\nPremise: …<|im_end|>\\n<|im_start|>assistant\\n {"thought… <|im_end|>
    └───────────────────────── prompt = the template's generation prompt ─────────────────────────┘ └ answer ┘ └ end ┘

  The answer's last label is the token the template closes an assistant turn with (``<|im_end|>`` here, which
  is also what generation stops on); the ``\\n`` the template writes after it is never supervised.

Either way the prompt is ``head + user ids + tail`` and the answer ``answer ids + end``, where head, tail and end
are fixed ids placed by hand, never parsed out of the user's text: a premise that contains ``[INST]`` or
``<|im_start|>`` cannot forge a turn boundary. For chat templates the pieces are read off the template once, and
checked to tokenize exactly as the whole rendered conversation does (else :class:`TemplateTokenError`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

# Short on purpose: every prompt token is paid for in every example, and a fine-tuned model needs a task marker,
# not an essay. 30 tokens of overhead instead of 80 lifts 512-token packing from ~91 % to ~97 % (benchmarks/).
INSTRUCTION = "Does the premise entail the hypothesis? Think in 3 steps, then answer in JSON (1 = entailment, 0 = not)."
USER_TEMPLATE = "Premise: {premise}\nHypothesis: {hypothesis}\n{instruction}"

#: A chat template that renders one user turn exactly as the Mistral v3 encoding above (``<s>[INST]▁…[/INST]``),
#: written into exported folders so that any OpenAI-compatible server prompts the model as it was trained.
MISTRAL_V3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('nlicot trained this model on user and assistant turns only') }}{% endif %}"
    "{% endfor %}"
)
#: Placeholders rendered through a chat template to find where its user text and answer go (never real text).
_USER_MARK, _ANSWER_MARK = "\ue000nlicot-user\ue000", "\ue000nlicot-answer\ue000"
#: What the template is checked on: real-looking text, so merges at the boundaries would show.
_PROBE_USER = "Premise: A dog runs.\nHypothesis: An animal moves.\n" + INSTRUCTION
_PROBE_ANSWER = '{"thought_process": "step 1: a. step 2: b. step 3: c.", "predicted_label": 1}'


def user_message(premise: str, hypothesis: str) -> str:
    """The user turn's text."""
    return USER_TEMPLATE.format(instruction=INSTRUCTION, premise=premise.strip(), hypothesis=hypothesis.strip())


def answer_text(thought_process: str, label: int) -> str:
    """The assistant turn: the JSON object the model learns to write (key order fixed: thought, then label)."""
    return json.dumps({"thought_process": thought_process.strip(), "predicted_label": int(label)}, ensure_ascii=False)


class TemplateTokenError(ValueError):
    """The tokenizer cannot be prompted the way nlicot trains; the CLI prints it as one ``error:`` line."""


@dataclass(frozen=True)
class PromptFormat:
    """The ids a model family wraps around the user text and the answer.

    ``head`` + user + ``tail`` is the prompt (up to where the model starts writing); ``end`` is the one token the
    model learns to write after its answer, and the one generation stops on.
    """

    family: Literal["mistral-v3", "chat-template"]
    head: tuple[int, ...]
    tail: tuple[int, ...]
    end: int

    def prompt(self, user_ids: list[int]) -> list[int]:
        return [*self.head, *user_ids, *self.tail]


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _has_mistral_controls(tokenizer) -> bool:
    ids = tokenizer.convert_tokens_to_ids(["[INST]", "[/INST]"])
    return all(i is not None and i != tokenizer.unk_token_id for i in ids)


def _ids(tokenizer, text: str) -> list[int]:
    """Template text (control tokens parsed), as ``apply_chat_template`` tokenizes it."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """User or model text: control-token spellings stay text (the fast tokenizer batches in Rust)."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _render(tokenizer, user: str, answer: str | None = None) -> str:
    messages = [{"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)


def _chat_format(tokenizer) -> PromptFormat:
    """Head, tail and end ids read off the tokenizer's chat template, checked against a whole rendered turn."""
    name = _name(tokenizer)
    try:
        asked = _render(tokenizer, _USER_MARK)
        full = _render(tokenizer, _USER_MARK, _ANSWER_MARK)
    except Exception as e:  # a template is code: any failure to render one user turn means "unsupported"
        raise TemplateTokenError(f"tokenizer {name}: its chat template cannot render one user turn ({e})") from e
    if asked.count(_USER_MARK) != 1 or not full.startswith(asked) or full[len(asked):].count(_ANSWER_MARK) != 1:
        raise TemplateTokenError(
            f"tokenizer {name}: its chat template does not render a user turn, then the generation prompt, then the "
            "assistant's text as written; nlicot cannot train on it (give a model with a plain chat template)"
        )
    head_text, tail_text = asked.split(_USER_MARK)
    before, after = full[len(asked):].split(_ANSWER_MARK)
    closing = _ids(tokenizer, after)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    if before or not closing or closing[0] not in special:
        raise TemplateTokenError(
            f"tokenizer {name}: its chat template {'adds text before' if before else 'does not close'} the "
            f"assistant's answer with a control token (after it: {after!r}); nlicot cannot place the answer's end"
        )
    fmt = PromptFormat("chat-template", tuple(_ids(tokenizer, head_text)), tuple(_ids(tokenizer, tail_text)),
                       closing[0])
    probe_user, probe_answer = _text_ids(tokenizer, [_PROBE_USER, _PROBE_ANSWER])
    ours = fmt.prompt(probe_user) + probe_answer + [fmt.end]
    whole = _ids(tokenizer, _render(tokenizer, _PROBE_USER, _PROBE_ANSWER))
    if whole[: len(ours)] != ours:
        raise TemplateTokenError(
            f"tokenizer {name}: its chat template tokenizes the message together with the text around it, so the "
            "prompt cannot be split into fixed control ids and the user's text"
        )
    return fmt


def prompt_format(tokenizer) -> PromptFormat:
    """How this tokenizer's model is prompted: Mistral v3 if it has the ``[INST]`` controls, else its chat
    template; neither is :class:`TemplateTokenError`."""
    if _has_mistral_controls(tokenizer):
        inst, inst_end = tokenizer.convert_tokens_to_ids(["[INST]", "[/INST]"])
        return PromptFormat("mistral-v3", (tokenizer.bos_token_id, inst), (inst_end,), tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        return _chat_format(tokenizer)
    raise TemplateTokenError(
        f"tokenizer {_name(tokenizer)} has no chat template and no [INST]/[/INST] control tokens (it is not a Mistral "
        "v3 tokenizer): use an instruct model whose tokenizer ships a chat template (chat_template.jinja or "
        "tokenizer_config.json's chat_template)"
    )


def template_fingerprint(tokenizer=None) -> str:
    """Changes whenever the prompt changes (text, and with a tokenizer its family's ids), so cached tokenizations
    are invalidated."""
    parts = [INSTRUCTION, USER_TEMPLATE]
    if tokenizer is not None:
        parts.append(json.dumps(asdict(prompt_format(tokenizer))))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def end_of_answer_id(tokenizer) -> int:
    """The token a trained model writes after its answer (EOS for Mistral, the end of turn for chat templates)."""
    return prompt_format(tokenizer).end


def encode_prompts(tokenizer, premises: list[str], hypotheses: list[str]) -> list[list[int]]:
    """Prompt ids for many rows at once."""
    fmt = prompt_format(tokenizer)
    user = _text_ids(tokenizer, [user_message(p, h) for p, h in zip(premises, hypotheses, strict=True)])
    return [fmt.prompt(u) for u in user]


def encode_answers(tokenizer, thoughts: list[str], labels: list[int]) -> list[list[int]]:
    """Answer ids + the end-of-answer token for many rows at once."""
    end = end_of_answer_id(tokenizer)
    texts = [answer_text(t, lab) for t, lab in zip(thoughts, labels, strict=True)]
    return [a + [end] for a in _text_ids(tokenizer, texts)]


def chat_template(tokenizer) -> str:
    """The chat template that renders a user turn as :func:`encode_prompts` does (what exported folders carry)."""
    fmt = prompt_format(tokenizer)
    return MISTRAL_V3_CHAT_TEMPLATE if fmt.family == "mistral-v3" else tokenizer.chat_template


def record(tokenizer) -> dict:
    """What a saved model folder says about its prompt (``nlicot.json``): enough to rebuild it without nlicot."""
    fmt = prompt_format(tokenizer)
    return {"family": fmt.family, "instruction": INSTRUCTION, "user_template": USER_TEMPLATE,
            "end_of_answer_token": tokenizer.convert_ids_to_tokens(fmt.end), "chat_template": chat_template(tokenizer),
            "fingerprint": template_fingerprint(tokenizer)}


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Save ``tokenizer`` with the chat template of the training prompt (the caller's tokenizer is not changed)."""
    saved = copy.copy(tokenizer)
    saved.chat_template = chat_template(tokenizer)
    saved.save_pretrained(folder)
