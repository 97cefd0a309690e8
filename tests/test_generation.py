"""Batched greedy generation: equal to one-at-a-time, input order kept, per-row stop on a closed JSON object."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from nlicot.generation import JsonCloser, JsonObjectStop, generate_batched, left_pad, token_pieces
from nlicot.parsing import extract_prediction
from nlicot.prompt import encode_prompts

PREMISES = ["A man plays a guitar on the corner of a busy street while people pass by.", "Rain.",
            "Two kids run in a park while their parents watch them from a wooden bench near the pond.",
            "A woman reads.", "The committee approved the budget after a long debate."]  # fmt: skip
HYPOTHESES = ["Someone makes music.", "It is wet outside today.", "Children play.", "A book is open.", "No vote."]


@pytest.fixture(scope="module")
def model(tiny_path: str):
    return AutoModelForCausalLM.from_pretrained(tiny_path).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    ids = encode_prompts(tokenizer, PREMISES, HYPOTHESES)
    assert len({len(p) for p in ids}) == len(ids), "prompts must differ in length so sorting reorders them"
    return ids


def reference(model, tokenizer, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Plain one-prompt ``generate`` (no padding, no batching, no custom stopping), cut at EOS."""
    out = model.generate(
        input_ids=torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
    )[0, len(prompt) :].tolist()  # fmt: skip
    return out[: out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out


def test_batched_equals_one_at_a_time_in_input_order(model, tokenizer, prompts) -> None:
    done: list[int] = []
    batched = generate_batched(model, tokenizer, prompts, max_new_tokens=24, batch_size=2, stop_at_json=False,
                               on_batch=done.append)  # fmt: skip
    assert done == [2, 2, 1]
    for prompt, got in zip(prompts, batched, strict=True):
        assert got.token_ids == reference(model, tokenizer, prompt, 24)
        assert got.text == tokenizer.decode(got.token_ids, skip_special_tokens=True)


def test_stopping_on_does_not_change_batched_vs_single(model, tokenizer, prompts) -> None:
    batched = generate_batched(model, tokenizer, prompts, max_new_tokens=24, batch_size=3)
    single = [generate_batched(model, tokenizer, [p], max_new_tokens=24)[0] for p in prompts]
    assert batched == single


def test_max_new_tokens_is_respected(model, tokenizer, prompts) -> None:
    out = generate_batched(model, tokenizer, prompts, max_new_tokens=5, stop_at_json=False)
    assert all(g.num_tokens <= 5 for g in out)
    assert all(g.num_tokens == 5 for g in out if g.finish_reason == "length")


def test_training_mode_is_restored(model, tokenizer, prompts) -> None:
    model.train()
    try:
        generate_batched(model, tokenizer, prompts[:1], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(("kwargs", "message"), [({"max_new_tokens": 0}, "max_new_tokens"),
                                                 ({"batch_size": 0}, "batch_size")])  # fmt: skip
def test_bad_arguments(model, tokenizer, prompts, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_batched(model, tokenizer, prompts, **kwargs)


def test_empty_prompt_is_refused_and_no_prompts_is_no_work(model, tokenizer) -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        generate_batched(model, tokenizer, [[1, 3, 4], []])
    assert generate_batched(model, tokenizer, []) == []


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# --- stopping on a closed JSON object -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "closes_at"),
    [
        (['{"a": 1', "}"], 2),
        (["{", '"x": {"y": 2}', ", ", "}", "{"], 4),  # nested object closes the inner one first
        (['{"t": "a } b', '"', "}"], 3),  # brace inside a string does not count
        (['{"t": "say \\"}\\" ok"', "}"], 2),  # escaped quotes keep the string open
        (['{"t": "ends with \\\\"', "}"], 2),  # an escaped backslash does not escape the quote
        (['He said "}" then ', '{"a": 1}'], 2),  # prose before the object is ignored
        (["}", " {", "}"], 3),  # a stray closing brace before any object is ignored
        (['{"a": 1', ' "b"'], None),
    ],
)
def test_json_closer(pieces: list[str], closes_at: int | None) -> None:
    closer = JsonCloser()
    states = [closer.feed(p) for p in pieces]
    expected = [closes_at is not None and i + 1 >= closes_at for i in range(len(pieces))]
    assert states == expected


def test_token_pieces_keep_json_structure(tokenizer) -> None:
    pieces = token_pieces(tokenizer)
    text = '{"thought_process": "a {b} \\"c\\" }", "predicted_label": 1}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    structure = "".join(c for c in text if c in '{}"\\')
    assert "".join(c for i in ids for c in pieces[i] if c in '{}"\\') == structure
    assert pieces[tokenizer.convert_tokens_to_ids("<0x7B>")] == "{"  # byte fallback
    assert pieces[tokenizer.eos_token_id] == ""


def test_stop_criterion_per_row_on_crafted_tokens(tokenizer) -> None:
    answer = tokenizer('ok {"thought_process": "a {b} \\"c\\" }", "predicted_label": 1} tail',
                       add_special_tokens=False)["input_ids"]  # fmt: skip
    closing = max(i for i, t in enumerate(answer) if "}" in tokenizer.convert_ids_to_tokens(t)) + 1
    prose = tokenizer(" no object here, just words" * 20, add_special_tokens=False)["input_ids"]
    n = len(answer)
    assert closing < n <= len(prose)
    prompt_length = 4
    rows = torch.tensor([[1, 3, 9, 4] + answer, [1, 3, 9, 4] + prose[:n]])
    stop = JsonObjectStop(token_pieces(tokenizer), prompt_length, batch_size=2)
    flags = [stop(rows[:, : prompt_length + step]).tolist() for step in range(1, n + 1)]
    assert [f[0] for f in flags] == [step >= closing for step in range(1, n + 1)]
    assert not any(f[1] for f in flags)
    assert stop.closed_at == [closing, None]


def scripted_model(tiny_path: str, transitions: dict[int, int]):
    """The tiny Mistral rewired so that greedy decoding follows ``transitions`` (last token -> next token).

    Attention and MLP outputs are zeroed, so the final hidden state is the normalised embedding of the last
    token; each successor's ``lm_head`` row points at its predecessors' embeddings. Generation still runs the
    real model code (cache, masks, padding); only the decisions are scripted.
    """
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        head = model.lm_head.weight
        head.zero_()
        for before, after in transitions.items():
            head[after] += 10 * emb[before] / emb[before].norm()
    return model


def chain(ids: list[int]) -> dict[int, int]:
    return dict(zip(ids[:-1], ids[1:]))


@pytest.fixture(scope="module")
def answer_ids(tokenizer) -> list[int]:
    ids = tokenizer('{"predicted_label": 1}', add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids)
    return ids


def test_generation_stops_each_row_at_its_closed_object(tiny_path, tokenizer, answer_ids) -> None:
    inst_end, lead_in, filler = 4, tokenizer.convert_tokens_to_ids(["▁Sure", "▁Here"]), 29477
    # Row A's prompt ends with [/INST] and answers at once; row B's ends with "Sure" and says "Here" first.
    # After the object, both would go on forever (filler -> filler) if nothing stopped them.
    model = scripted_model(tiny_path, {inst_end: answer_ids[0], **chain(lead_in + answer_ids),
                                       answer_ids[-1]: filler, filler: filler})  # fmt: skip
    a, b = [1, 3, 500, inst_end], [1, 3, 500, 600, 700, lead_in[0]]
    out = generate_batched(model, tokenizer, [a, b], max_new_tokens=16)
    assert [g.finish_reason for g in out] == ["json", "json"]
    assert out[0].token_ids == answer_ids
    assert out[1].token_ids == [lead_in[1], *answer_ids]
    assert extract_prediction(out[1].text).label == 1
    unstopped = generate_batched(model, tokenizer, [a, b], max_new_tokens=16, stop_at_json=False)
    assert [(g.finish_reason, g.num_tokens) for g in unstopped] == [("length", 16), ("length", 16)]
    assert unstopped[0].token_ids[: len(answer_ids) + 1] == [*answer_ids, filler]


def test_generation_stops_at_eos(tiny_path, tokenizer, answer_ids) -> None:
    model = scripted_model(tiny_path, {4: answer_ids[0], **chain(answer_ids), answer_ids[-1]: tokenizer.eos_token_id})
    (out,) = generate_batched(model, tokenizer, [[1, 3, 500, 4]], max_new_tokens=16, stop_at_json=False)
    assert (out.finish_reason, out.token_ids) == ("eos", answer_ids)
    (cut,) = generate_batched(model, tokenizer, [[1, 3, 500, 4]], max_new_tokens=3)
    assert (cut.finish_reason, cut.token_ids) == ("length", answer_ids[:3])


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")
def test_peft_4bit_model_decodes_with_the_kv_cache(tiny_path, tokenizer, prompts) -> None:
    """The model as training leaves it (NF4 base, LoRA, ``config.use_cache=False``) still decodes one token a step."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_path, quantization_config=quant, device_map={"": "cpu"})
    base.config.use_cache = False
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    step_lengths: list[int] = []
    model.get_base_model().get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: step_lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    batched = generate_batched(model, tokenizer, prompts[:3], max_new_tokens=6, stop_at_json=False)
    assert step_lengths[0] == max(len(p) for p in prompts[:3])  # one prefill over the padded batch ...
    assert set(step_lengths[1:]) == {1}  # ... then one new token per step
    single = [generate_batched(model, tokenizer, [p], max_new_tokens=6, stop_at_json=False)[0] for p in prompts[:3]]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
