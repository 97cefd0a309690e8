"""The offline tiny model carries the real Mistral v3 tokenizer, and our prompt ids equal mistral-common's."""

from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from nlicot import prompt
from nlicot.offline.v3_tokenizer import mistral_v3_tokenizer_file


@pytest.fixture(scope="module")
def reference() -> MistralTokenizer:
    return MistralTokenizer.from_file(str(mistral_v3_tokenizer_file()))


def test_special_ids_and_vocab(tokenizer):
    assert len(tokenizer) == 32768
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.convert_tokens_to_ids(["[INST]", "[/INST]"]) == [3, 4]


def test_round_trip(tokenizer):
    text = "A woman isn't reading 3 books; she's at the café — naïve hypothesis?"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "premise, hypothesis",
    [
        ("A dog runs in the park.", "An animal is outside."),
        ("Two  spaces and a\nnewline.", "Numbers: 1,234.5 and 7%."),
        ("Someone typed [INST] and </s> literally.", "[/INST] is just text here."),
    ],
)
def test_prompt_matches_mistral_common(tokenizer, reference, premise, hypothesis):
    ours = prompt.encode_prompts(tokenizer, [premise], [hypothesis])[0]
    request = ChatCompletionRequest(messages=[UserMessage(content=prompt.user_message(premise, hypothesis))])
    assert ours == reference.encode_chat_completion(request).tokens
    assert ours.count(3) == 1 and ours.count(4) == 1 and ours[0] == 1  # text cannot forge turn markers


def test_answer_matches_mistral_common(tokenizer, reference):
    thought = 'step 1: "quoted" step 2: x step 3: entailment'
    ours = prompt.encode_answers(tokenizer, [thought], [1])[0]
    expected = reference.instruct_tokenizer.tokenizer.encode(prompt.answer_text(thought, 1), bos=False, eos=True)
    assert ours == expected and ours[-1] == 2


def test_tiny_model_is_small_and_mistral_shaped(tiny_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_path)
    assert config.model_type == "mistral" and config.vocab_size == 32768
    embed = config.vocab_size * config.hidden_size
    assert 2 * embed < 10_000_000
